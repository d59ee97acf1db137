"""One training recipe (components/common/recipe.py) and ε derived once, from the ledger's events."""

import json
import math

import pytest

from privacy_audit.components.common.recipe import (DEFAULT_TARGET_EPSILON, TrainingRecipe, ledger_mismatches,
                                                    recipe_differences, recipe_from_exec_properties)
from privacy_audit.components.dp_trainer import accounting

# A value for every field, none of them the default.
EVERY_FIELD = dict(module_file="/models/m.py", model_fn="make_model", builtin_model="mlp",
                   hparams={"hidden_units": [32, 16], "dropout": 0.1}, epochs=7, batch_size=33, learning_rate=0.02,
                   optimizer="sgd", lr_schedule="cosine", private=True, l2_norm_clip=0.7, noise_multiplier=None, target_epsilon=2.5,
                   delta=1e-6, sampling="shuffle", accountant="pld", checkpoint_every=3, seed=11, audit_canaries=40,
                   adaptive_clipping=True, target_unclipped_quantile=0.7, clip_learning_rate=0.1,
                   clipped_count_stddev=4.0)


# --------------------------------------------------------------------------- the dataclass


def test_every_field_is_covered_and_differs_from_its_default():
    default = TrainingRecipe()
    assert set(EVERY_FIELD) == set(TrainingRecipe.field_names())
    assert [k for k, v in EVERY_FIELD.items() if getattr(default, k) == v] == ["private", "noise_multiplier"]


def test_json_round_trip_keeps_every_field():
    recipe = TrainingRecipe(**EVERY_FIELD)
    text = recipe.to_json()
    assert list(json.loads(text)) == sorted(EVERY_FIELD)  # sorted keys: a stable cache key
    back = TrainingRecipe.from_json(text)
    assert back == recipe and hash(back) == hash(recipe) and back.to_json() == text
    for name, value in EVERY_FIELD.items():
        assert getattr(back, name) == value, name
    public = recipe.replace(private=False, target_epsilon=None, noise_multiplier=1.3)
    assert TrainingRecipe.from_json(public.to_json()) == public


def test_numbers_are_canonical_so_equal_recipes_have_equal_json():
    assert TrainingRecipe(learning_rate=1, l2_norm_clip=2, noise_multiplier=1).to_json() == \
        TrainingRecipe(learning_rate=1.0, l2_norm_clip=2.0, noise_multiplier=1.0).to_json()
    assert TrainingRecipe(hparams={"b": 1, "a": 2}).to_json() == TrainingRecipe(hparams={"a": 2, "b": 1}).to_json()


def test_unknown_keys_are_refused_by_name():
    text = json.dumps({**json.loads(TrainingRecipe().to_json()), "epoch": 3, "lr": 0.1})
    with pytest.raises(ValueError, match=r"unknown training recipe key\(s\) \['epoch', 'lr'\]; valid keys: .*epochs"):
        TrainingRecipe.from_json(text)
    with pytest.raises(ValueError, match=r"\['lr'\]"):
        TrainingRecipe().replace(lr=0.1)
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainingRecipe.from_json("{epochs: 3")
    # Missing keys take the defaults.
    assert TrainingRecipe.from_json('{"epochs": 3}') == TrainingRecipe(epochs=3)


def test_recipe_is_frozen_and_hparams_read_only():
    recipe = TrainingRecipe(hparams={"hidden_units": [8]})
    with pytest.raises(Exception):
        recipe.epochs = 3
    with pytest.raises(TypeError, match="read-only"):
        recipe.hparams["hidden_units"] = [16]
    assert recipe.replace(hparams={"hidden_units": [16]}).hparams == {"hidden_units": [16]}
    assert {recipe: 1}[TrainingRecipe(hparams={"hidden_units": [8]})] == 1


@pytest.mark.parametrize("fields, n_examples, match", [
    (dict(noise_multiplier=1.0, audit_canaries=1), None, "audit_canaries must be 0"),
    (dict(noise_multiplier=1.0, audit_canaries=60), 100, r"audit_canaries \(60\) must be at most half"),
    (dict(noise_multiplier=1.0, optimizer="rmsprop"), None, "optimizer must be one of"),
    (dict(noise_multiplier=1.0, sampling="fixed"), None, "sampling must be 'poisson' or 'shuffle'"),
    (dict(noise_multiplier=1.0, epochs=0), None, "epochs must be a positive integer"),
    (dict(noise_multiplier=1.0, checkpoint_every=-1), None, "checkpoint_every must be >= 0"),
    (dict(noise_multiplier=1.0, learning_rate=0.0), None, "learning_rate must be > 0"),
    (dict(noise_multiplier=1.0, accountant="gdp"), None, "accountant must be one of"),
    (dict(noise_multiplier=1.0, batch_size=0), None, "batch_size"),
    (dict(noise_multiplier=1.0, batch_size=200), 100, "larger than the number of training examples"),
    (dict(), None, "exactly one of noise_multiplier or target_epsilon"),
    (dict(noise_multiplier=1.0, target_epsilon=2.0), None, "exactly one of noise_multiplier or target_epsilon"),
    (dict(noise_multiplier=-1.0), None, "noise_multiplier"),
    (dict(noise_multiplier=1.0, l2_norm_clip=0.0), None, "l2_norm_clip"),
    (dict(target_epsilon=1.0, delta=1.5), None, "delta"),
    (dict(target_epsilon=1.0, delta=0.02), 100, "not below 1/N"),
])
def test_validate_names_the_setting(fields, n_examples, match):
    with pytest.raises(ValueError, match=match):
        TrainingRecipe(**fields).validate(n_examples=n_examples)


def test_a_baseline_needs_no_noise_and_a_valid_recipe_validates():
    assert TrainingRecipe(private=False).validate(n_examples=100) == TrainingRecipe(private=False)
    TrainingRecipe(noise_multiplier=1.1).validate(n_examples=1000)


def test_run_time_overrides_apply_through_one_function():
    recipe = TrainingRecipe(epochs=40, target_epsilon=1.0)
    assert recipe.with_overrides() is recipe
    assert recipe.with_overrides(epochs=2, target_epsilon=2.0) == recipe.replace(epochs=2, target_epsilon=2.0)
    # A σ-given or non-private recipe has no ε to override.
    assert TrainingRecipe(noise_multiplier=1.0).with_overrides(target_epsilon=2.0).target_epsilon is None
    assert TrainingRecipe(private=False).with_overrides(target_epsilon=2.0).target_epsilon is None
    props = {"recipe": recipe.to_json(), "epochs": 3, "target_epsilon": None}
    assert recipe_from_exec_properties(props) == recipe.replace(epochs=3)


def test_recipe_comparison_is_library_code():
    a = TrainingRecipe(target_epsilon=1.0, epochs=10)
    assert recipe_differences(a, a.to_json()) == []
    assert recipe_differences(a, a.replace(epochs=12, learning_rate=1e-3 * (1 + 1e-12)),
                              labels=("references", "target")) == ["epochs: references 10, target 12"]
    base = TrainingRecipe(private=False)
    assert recipe_differences(base, base.replace(l2_norm_clip=3.0)) == []  # no clipping without privacy
    ledger = {"private": True, "epochs_planned": 10, "expected_batch_size": 64, "learning_rate": 1e-3,
              "optimizer": "adam", "sampling": "poisson", "l2_norm_clip": 1.0, "noise_multiplier": 1.25}
    as_run = {"epochs": 10, "batch_size": 64, "learning_rate": 1e-3, "optimizer": "adam", "private": True,
              "sampling": "poisson", "l2_norm_clip": 1.0, "noise_multiplier": 1.25, "fit_with": "dp_trainer"}
    assert ledger_mismatches(as_run, ledger) == [] and ledger_mismatches(as_run, None) == []
    assert ledger_mismatches({**as_run, "noise_multiplier": 0.9}, ledger) == [
        "noise_multiplier: references 0.9, target 1.25"]
    assert ledger_mismatches({**as_run, "noise_multiplier": 0.9}, {**ledger, "private": False}) == [
        "private: references True, target False"]


# --------------------------------------------------------------------------- variants and the command line


def test_variant_is_a_name_and_a_recipe():
    from privacy_audit.pipelines.pipeline import VariantSpec, default_variants

    v = VariantSpec(name="dp", recipe=TrainingRecipe(target_epsilon=2.0, epochs=5))
    assert v.epochs == 5 and v.target_epsilon == 2.0 and v.private  # the recipe's fields, read through
    assert VariantSpec.of("dp", target_epsilon=2.0, epochs=5) == v
    assert VariantSpec(name="dp", recipe=v.recipe.to_json()) == v
    with pytest.raises(AttributeError):
        v.learning_rat  # noqa: B018
    dp = next(d for d in default_variants(6) if d.private)
    assert dp.recipe.epochs == 6 and dp.recipe.l2_norm_clip == 4.0 and dp.recipe.target_epsilon == 1.0


def test_command_line_defaults_come_from_the_dataclass(tmp_path):
    from privacy_audit.pipelines import run
    from privacy_audit.pipelines.cli import build_parser

    default = TrainingRecipe()
    for key in ("epochs", "optimizer", "sampling", "accountant", "checkpoint_every", "model_fn", "seed"):
        assert run.DEFAULTS[key] == getattr(default, key), key
    assert run.VARIANT_KEYS == {"name"} | set(TrainingRecipe.field_names()) - {"seed", "audit_canaries"}
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("variants:\n  - {name: base, private: false}\n  - {name: dp, hparams: {units: 3}}\n")
    args = build_parser().parse_args(["run", "--config", str(cfg)])
    got = {v.name: v for v in run.build_variants(run.resolve_settings(args))}
    assert got["base"].recipe == TrainingRecipe(private=False)
    assert got["dp"].recipe == TrainingRecipe(target_epsilon=DEFAULT_TARGET_EPSILON, hparams={"units": 3})


# --------------------------------------------------------------------------- the components


def _channel():
    from tfx import types
    from tfx.types import standard_artifacts

    return types.Channel(type=standard_artifacts.Examples)


def test_dp_trainer_exec_properties_hold_one_recipe():
    from privacy_audit.components.dp_trainer.component import DPTrainer

    recipe = TrainingRecipe(epochs=3, batch_size=20, noise_multiplier=1.1, hparams={"hidden_units": [8]})
    trainer = DPTrainer(examples=_channel(), label_key="label", model_variant="dp", recipe=recipe)
    p = trainer.exec_properties
    assert TrainingRecipe.from_json(p["recipe"]) == recipe == trainer.recipe
    assert p["epochs"] is None and p["target_epsilon"] is None  # no run-time overrides
    assert not set(p) & (set(TrainingRecipe.field_names()) - {"epochs", "target_epsilon"})
    # Keyword arguments build the same recipe.
    same = DPTrainer(examples=_channel(), label_key="label", model_variant="dp", epochs=3, batch_size=20,
                     noise_multiplier=1.1, hparams={"hidden_units": [8]})
    assert same.exec_properties["recipe"] == p["recipe"]


def test_dp_trainer_run_time_parameters_are_overrides_of_the_recipe():
    from tfx.v1.dsl.experimental import RuntimeParameter

    from privacy_audit.components.dp_trainer.component import DPTrainer

    epochs = RuntimeParameter(name="epochs", ptype=int, default=4)
    eps = RuntimeParameter(name="target_epsilon_dp", ptype=float, default=2.0)
    trainer = DPTrainer(examples=_channel(), label_key="label", model_variant="dp", epochs=epochs,
                        target_epsilon=eps)
    p = trainer.exec_properties
    assert p["epochs"] is epochs and p["target_epsilon"] is eps
    assert TrainingRecipe.from_json(p["recipe"]) == TrainingRecipe(epochs=4, target_epsilon=2.0)
    assert recipe_from_exec_properties({**p, "epochs": 1, "target_epsilon": 3.0}) == \
        TrainingRecipe(epochs=1, target_epsilon=3.0)


def test_reference_model_trainer_copies_the_dp_trainers_recipe():
    from tfx.v1.dsl.experimental import RuntimeParameter

    from privacy_audit.components.dp_trainer.component import DPTrainer
    from privacy_audit.components.reference_models.component import ReferenceModelTrainer

    epochs = RuntimeParameter(name="epochs", ptype=int, default=4)
    trainer = DPTrainer(examples=_channel(), label_key="y", model_variant="dp", feature_keys=["a", "b"],
                        epochs=epochs, batch_size=16, target_epsilon=2.0, seed=5, builtin_model="mlp")
    refs = ReferenceModelTrainer.for_trainer(trainer, _channel(), k=4, seed=9)
    p, q = trainer.exec_properties, refs.exec_properties
    assert q["recipe"] == p["recipe"] and q["epochs"] is epochs
    assert (q["label_key"], q["feature_keys"], q["model_variant"]) == ("y", p["feature_keys"], "dp")
    assert (q["k"], q["seed"]) == (4, 9)


# --------------------------------------------------------------------------- ε derived once, from the events


def _independent_epsilon(events, delta, accountant):
    import dp_accounting
    from dp_accounting import pld, rdp

    acc = rdp.RdpAccountant(accounting.RDP_ORDERS) if accountant == "rdp" else \
        pld.PLDAccountant(value_discretization_interval=accounting.PLD_DISCRETIZATION)
    for q, sigma, steps in events:
        acc.compose(dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
@pytest.mark.medium
def test_epsilon_of_ledger_equals_dp_accountings_for_the_same_events(accountant):
    ledger = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1000, expected_batch_size=20,
                                      noise_multiplier=1.5, l2_norm_clip=1.0, delta=1e-5, accountant=accountant)
    for epoch in (1, 2, 3):
        ledger.record_steps(20)
        ledger.end_epoch(epoch)
    js = ledger.to_json()
    assert "accountant_note" not in js  # PLD within its work bound: no fallback to RDP
    want = _independent_epsilon([(0.02, 1.5, 60)], 1e-5, accountant)
    assert accounting.epsilon_of_ledger(js) == pytest.approx(want, rel=1e-9)
    # What the ledger writes (final and per epoch) is that function's value, never a second computation.
    assert js["epsilon"] == accounting.epsilon_of_ledger(js) == ledger.epsilon()
    for rec in js["epochs"]:
        assert rec["epsilon"] == accounting.epsilon_of_ledger(js, upto_epoch=rec["epoch"])
    assert accounting.epsilon_of_ledger(js, upto_epoch=1) == pytest.approx(
        _independent_epsilon([(0.02, 1.5, 20)], 1e-5, accountant), rel=1e-9)


def test_epsilon_of_ledger_composes_events_of_different_noise():
    events = [{"type": "poisson_sampled_gaussian", "sampling_probability": 0.01, "noise_multiplier": 1.0,
               "steps": 300},
              {"type": "poisson_sampled_gaussian", "sampling_probability": 0.02, "noise_multiplier": 2.0,
               "steps": 100}]
    ledger = {"private": True, "delta": 1e-6, "accountant": "rdp", "noise_multiplier": 1.0, "events": events,
              "epochs": [{"epoch": 1, "steps": 250}, {"epoch": 2, "steps": 400}]}
    assert accounting.epsilon_of_ledger(ledger) == pytest.approx(
        _independent_epsilon([(0.01, 1.0, 300), (0.02, 2.0, 100)], 1e-6, "rdp"), rel=1e-9)
    assert accounting.epsilon_of_ledger(ledger, upto_epoch=1) == pytest.approx(
        _independent_epsilon([(0.01, 1.0, 250)], 1e-6, "rdp"), rel=1e-9)
    with pytest.raises(ValueError, match="no epoch 3"):
        accounting.epsilon_of_ledger(ledger, upto_epoch=3)


def test_epsilon_of_ledger_without_privacy_or_noise():
    assert accounting.epsilon_of_ledger({"private": False, "events": []}) is None
    no_noise = {"private": True, "delta": 1e-5, "noise_multiplier": 0.0, "accountant": "rdp",
                "events": [{"sampling_probability": 0.1, "noise_multiplier": 0.0, "steps": 10}]}
    assert math.isinf(accounting.epsilon_of_ledger(no_noise))
    assert accounting.epsilon_of_ledger({"private": True, "delta": 1e-5, "noise_multiplier": 1.0,
                                         "events": []}) == 0.0


def test_report_reads_epsilon_from_the_events_not_the_written_copy():
    from privacy_audit.components.privacy_report import load

    ledger = accounting.PrivacyLedger(model_variant="dp", private=True, n_examples=1000, expected_batch_size=50,
                                      noise_multiplier=1.1, l2_norm_clip=1.0, delta=1e-5)
    ledger.record_steps(40)
    ledger.end_epoch(1)
    js = ledger.to_json()
    assert load.read_ledger(js).epsilon == js["epsilon"]
    tampered = {**js, "epsilon": 0.01}
    assert load.read_ledger(tampered).epsilon == accounting.epsilon_of_ledger(js)
