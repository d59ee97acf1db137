"""Run membership-inference attacks on saved model outputs: the library entry point and the
``privacy-audit attack`` subcommand.

    privacy-audit attack --input FILE --output results.json [--attacks a,b] [--slicing by_class,...] [--seed N]

FILE is ``.npz`` or Parquet (see :class:`~privacy_audit.components.membership_inference.data.AttackInputs`). The output
is the attack results JSON of DESIGN.md. The reference-model attacks (``lira``, ``lira_offline``, ``rmia``,
``rmia_offline``) also need the reference models' outputs on the same examples, in a ``.npz`` input:
``ref_logits`` [K, N, C] and ``ref_in_mask`` [K, N] (bool), over the members then the non-members
(N = n_members + n_nonmembers, in the order of ``logits_train`` then ``logits_test``).

Only the standard library is imported at module level, so that building the CLI parser stays fast; numpy,
scipy and scikit-learn are imported when attacks run.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from privacy_audit.components.common.threads import ordered_map
from privacy_audit.components.common.threads import available as attack_threads  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    from privacy_audit.components.membership_inference.attacks import AttackConfig
    from privacy_audit.components.membership_inference.data import AttackInputs
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

DEFAULT_ATTACKS = ("threshold", "logistic_regression")
Progress = Callable[[str], None]


class DuplicateExamplesWarning(UserWarning):
    """Some examples appear among both members and non-members."""


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_attacks(inputs: "AttackInputs", attacks: Sequence[str] = DEFAULT_ATTACKS,
                slicing: Optional["SlicingSpec"] = None, *, seed: int = 0, min_slice_size: int = 20,
                metadata: Optional[Mapping[str, Any]] = None, config: Optional["AttackConfig"] = None,
                delta: float = 1e-5, confidence: float = 0.95, fpr_targets: Sequence[float] = (0.01, 0.001),
                roc_points: int = 200, progress: Optional[Progress] = None, references: Any = None,
                reference_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Runs ``attacks`` on every slice of ``inputs`` and returns the results JSON object (validated).

    Args:
      inputs: members' and non-members' model outputs.
      attacks: names from :data:`attacks.ATTACKS` (``threshold``, ``threshold_entropy``,
        ``logistic_regression``, ``mlp``, ``random_forest``, ``knn``; with ``references``: ``lira``,
        ``lira_offline``, ``rmia``, ``rmia_offline``).
      slicing: which slices (default: the entire data set only).
      seed: seeds every random choice (trained attacks' folds, subsamples, models).
      min_slice_size: slices with fewer members or non-members are skipped (listed in ``skipped_slices``;
        trained attacks also skip, with an ``"attack"`` key, slices with fewer than 2 on a side).
      metadata: merged into the output's metadata (``model_variant``, ``epoch``, ``epsilon``, ...).
        ``accuracy_train``/``accuracy_test`` are computed from the outputs when not given.
      config: trained-attack settings (folds, subsample caps, hyperparameter search).
      delta, confidence: for ``epsilon_lower_bound``; fpr_targets: for ``tpr_at_fpr``.
      progress: called with one line per slice and attack (e.g. ``print``); None: silent.
      references: :class:`~privacy_audit.components.reference_models.signals.ReferenceSignals` over the members
        then the non-members, for the reference attacks. Their scores are computed once over all examples (each example's IN/OUT fit
        does not depend on the slice) and measured per slice like every other attack.
      reference_options: ``{"lira": {"fixed_variance": true|false|"auto"}, "rmia": {"gamma", "offline_a"}}``
        (see :func:`attacks.reference.resolve_attack_options`).
    Returns the results object (``schema_version``, ``metadata``, ``results``, ``skipped_slices``).
    Examples whose ids appear on both sides are counted in ``metadata.n_duplicate_examples`` and reported
    with a :class:`DuplicateExamplesWarning`.
    """
    from privacy_audit.components.membership_inference import attacks as attacks_mod
    from privacy_audit.components.membership_inference import results, slicing as slicing_mod
    from privacy_audit.components.membership_inference.assemble import run_metadata, with_given_metadata

    names = attacks_mod.check_attack_names(list(attacks))
    reference_names = attacks_mod.reference_attack_names(names)
    reference_options = attacks_mod.check_reference_options(reference_options)
    if reference_names and references is None:
        raise ValueError(f"{', '.join(reference_names)} need reference models: give ref_logits [K, N, C] and "
                         "ref_in_mask [K, N] (members then non-members) in the .npz input")
    spec = slicing if slicing is not None else slicing_mod.SlicingSpec()
    config = config or attacks_mod.AttackConfig()
    t_start = time.perf_counter()

    n_dup = inputs.count_duplicates()
    if n_dup:
        warnings.warn(f"{n_dup} example ids appear among both members and non-members; membership of these "
                      "examples is ambiguous and biases the metrics: deduplicate the inputs",
                      DuplicateExamplesWarning, stacklevel=2)
    for name in names:  # fail early with a clear message (the two sides on two threads)
        if name in ("threshold", "threshold_entropy"):
            list(ordered_map(inputs.loss if name == "threshold" else inputs.entropy, ("members", "nonmembers")))

    slices, skipped = slicing_mod.make_slices(inputs, spec, min_slice_size=min_slice_size)
    prepared = attacks_mod.PreparedInputs(inputs, config, references, reference_options)
    metric_kwargs = {"delta": delta, "confidence": confidence, "fpr_targets": fpr_targets, "roc_points": roc_points}
    out = _attack_slices(slices, names, prepared, skipped, seed=seed, metric_kwargs=metric_kwargs, progress=progress)
    if progress is not None:
        for s in skipped:
            progress(f"skipped {slicing_mod.slice_name(s['slice'])}: {s['reason']}")

    md = run_metadata(accuracy_train=inputs.accuracy("members"), accuracy_test=inputs.accuracy("nonmembers"),
                      n_members=inputs.n_members, n_nonmembers=inputs.n_nonmembers, n_duplicate_examples=n_dup,
                      attacks=names, slicing=spec, seed=seed, min_slice_size=min_slice_size, delta=delta,
                      confidence=confidence)
    md["seconds"] = round(time.perf_counter() - t_start, 3)
    if reference_names:
        md["reference_models"] = {**references.summary(), "attacks": {
            name: prepared.reference_scores(name)[1] for name in reference_names}}
    md = with_given_metadata(md, metadata)
    return results.build_results(out, md, skipped)


def _attack_slices(slices, names: Sequence[str], prepared, skipped: List[Dict[str, Any]], *, seed: int,
                   metric_kwargs: Mapping[str, Any], progress: Optional[Progress]) -> List[Dict[str, Any]]:
    """One results entry per slice and attack (slices in order, then attacks as given); trained attacks on a
    slice with fewer than 2 members or non-members are added to ``skipped`` instead."""
    import numpy as np

    from privacy_audit.components.membership_inference import attacks as attacks_mod, metrics
    from privacy_audit.components.membership_inference.slicing import slice_name

    inputs = prepared.inputs
    wm, wn = inputs.sample_weight("members"), inputs.sample_weight("nonmembers")

    def one(task) -> Tuple[str, Dict[str, Any], float]:
        """``(kind, entry, seconds)`` of one slice and attack: kind "result" or "skipped"."""
        sl, name = task
        t0 = time.perf_counter()
        if attacks_mod.ATTACKS[name].trained and min(sl.n_members, sl.n_nonmembers) < 2:
            return "skipped", {"slice": sl.spec, "attack": name, "n_members": sl.n_members,
                               "n_nonmembers": sl.n_nonmembers,
                               "reason": "a trained attack needs at least 2 members and 2 non-members"}, 0.0
        label = np.concatenate([np.ones(sl.n_members, dtype=bool), np.zeros(sl.n_nonmembers, dtype=bool)])
        weight = None if wm is None else np.concatenate([wm[sl.member_idx], wn[sl.nonmember_idx]])
        sm, sn = attacks_mod.attack_scores(name, prepared, sl.member_idx, sl.nonmember_idx,
                                           _derived_seed(seed, sl.spec, name))
        m = metrics.attack_metrics(np.concatenate([sm, sn]), label, weight, **metric_kwargs)
        return "result", {"slice": sl.spec, "attack": name, **m}, time.perf_counter() - t0

    out: List[Dict[str, Any]] = []
    tasks = [(sl, name) for sl in slices for name in names]
    # On a thread per core (numpy's sorts and ufuncs release the GIL); the shared per-example quantities
    # (features, reference scores) are computed once, under a lock, by the first task that needs them. Every
    # (slice, attack) has its own seed and results are taken in task order: the output does not depend on
    # the threads.
    # Started longest first (by slice size, trained attacks first) so that no thread idles at the end.
    cost = [(-(sl.n_members + sl.n_nonmembers), not attacks_mod.ATTACKS[name].trained) for sl, name in tasks]
    done = ordered_map(one, tasks, start_order=sorted(range(len(tasks)), key=cost.__getitem__))
    for step, ((sl, _), (kind, entry, seconds)) in enumerate(zip(tasks, done), start=1):
        if kind == "skipped":
            skipped.append(entry)
            continue
        out.append(entry)
        if progress is not None:
            progress(f"[{step}/{len(tasks)}] {slice_name(sl.spec)} {entry['attack']}: auc={entry['auc']:.4f} "
                     f"advantage={entry['attacker_advantage']:.4f} ({seconds:.2f}s)")
    return out


def _derived_seed(seed: int, slice_spec: Mapping[str, Any], attack: str) -> int:
    """A stable per-(slice, attack) seed, so that adding a slice does not change the others' results."""
    import json
    import zlib

    key = json.dumps([int(seed), dict(slice_spec), attack], sort_keys=True, default=str).encode()
    return zlib.crc32(key) & 0x7FFFFFFF


# File signatures: a .npz is a zip archive (an empty one starts with the end-of-directory record); Parquet
# starts with PAR1; a lone .npy array starts with \x93NUMPY.
_MAGIC = {".npz": (b"PK\x03\x04", b"PK\x05\x06"), ".parquet": (b"PAR1",), ".pq": (b"PAR1",)}


def _check_signature(path: str, ext: str) -> None:
    """ValueError when the file's first bytes do not match its extension (e.g. a .npy renamed .npz)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_MAGIC[ext]):
        return
    what = "a single .npy array (save it with np.savez)" if head.startswith(b"\x93NUMPY") else \
        "empty" if not head else f"starting with {head[:6]!r}"
    kind = "a .npz archive (a zip of .npy arrays)" if ext == ".npz" else "a Parquet file"
    raise ValueError(f"{path} is not {kind}: the file is {what}")


def load_inputs(path: str) -> "AttackInputs":
    """Reads ``.npz`` or Parquet (``.parquet``/``.pq``) attack inputs; ValueError when the file's content does
    not match its extension."""
    from privacy_audit.components.membership_inference.data import AttackInputs

    if not os.path.exists(path):
        raise FileNotFoundError(f"input file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"input must be a .npz or Parquet file, got a directory: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in _MAGIC:
        raise ValueError(f"unsupported input format {ext or '(no extension)'!r} for {path}: use .npz or .parquet")
    _check_signature(path, ext)
    return AttackInputs.from_npz(path) if ext == ".npz" else AttackInputs.from_parquet(path)


def check_output_path(output_path: str, input_paths: Sequence[str]) -> None:
    """Refuses, before any work, an output the results could not be written to or that would destroy an input:
    a directory, a name or path longer than the system allows, or a path that resolves to an input file
    (the same path, a symlink to it or a hard link of it)."""
    if not output_path or "\x00" in output_path:
        raise ValueError(f"--output must be a file name without NUL bytes, got {output_path!r}")
    if os.path.isdir(output_path):
        raise IsADirectoryError(f"--output {output_path} is a directory; give a file name such as results.json")
    name_max, path_max = _limits(output_path)
    name = os.path.basename(output_path).encode()
    # write_results first writes a temporary ".tmp-XXXXXXXX.json" beside it: that name must fit too.
    if len(name) > name_max:
        raise ValueError(f"--output file name is {len(name)} bytes long; the system allows {name_max}: "
                         "choose a shorter name")
    if len(os.path.abspath(output_path).encode()) >= path_max:
        raise ValueError(f"--output path is longer than the system's limit of {path_max} bytes")
    for src in input_paths:
        same = os.path.realpath(src) == os.path.realpath(output_path)
        if not same and os.path.exists(output_path) and os.path.exists(src):
            same = os.path.samefile(src, output_path)
        if same:
            raise ValueError(f"--output {output_path} is the input file {src} (or a link to it): writing the "
                             "results there would destroy the input; choose another output name")


def _limits(path: str):
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        return os.pathconf(parent or "/", "PC_NAME_MAX"), os.pathconf(parent or "/", "PC_PATH_MAX")
    except (OSError, ValueError):  # pragma: no cover - platforms without pathconf
        return 255, 4096


def load_references(path: str):
    """The reference models' signals of a ``.npz`` input (``ref_logits`` [K, N, C], ``ref_in_mask`` [K, N]) as a
    :class:`~privacy_audit.components.reference_models.signals.ReferenceSignals`, or None when the file has none
    (or is Parquet)."""
    import numpy as np

    from privacy_audit.components.reference_models.signals import ReferenceSignals

    if os.path.splitext(path)[1].lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        refs = {k: npz[k] for k in ("ref_logits", "ref_in_mask") if k in keys}
    extra = sorted(k for k in keys if k.startswith("ref_") and k not in ("ref_logits", "ref_in_mask"))
    if extra:
        raise ValueError(f"{path}: unrecognised reference keys {extra}; expected ref_logits and ref_in_mask")
    if not refs:
        return None
    if len(refs) != 2:
        raise ValueError(f"{path}: give both ref_logits [K, N, C] and ref_in_mask [K, N], not only {sorted(refs)}")
    try:
        return ReferenceSignals(refs["ref_logits"], refs["ref_in_mask"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def attack_file(input_path: str, output_path: str, attacks: Sequence[str] = DEFAULT_ATTACKS,
                slicing_names: Sequence[str] = (), seed: int = 0, min_slice_size: int = 20, *,
                metadata: Optional[Mapping[str, Any]] = None, progress: Optional[Progress] = None,
                **kwargs: Any) -> Dict[str, Any]:
    """``privacy-audit attack``: reads inputs, runs the attacks, writes the results JSON atomically.

    Args:
      input_path: ``.npz`` or Parquet file (``logits_train``/``logits_test`` or ``probs_*``,
        ``labels_*``, or ``loss_*``; ``.npz`` also ``ref_logits``/``ref_in_mask`` for lira and rmia).
      output_path: results JSON to write (parent directories are created).
      attacks: attack names.
      slicing_names: e.g. ``["by_class", "by_percentiles"]`` (the entire data set is always included).
      seed, min_slice_size: as :func:`run_attacks`.
      metadata: extra metadata (default model_variant: the input file's base name).
      kwargs: passed to :func:`run_attacks` (delta, confidence, config, ...).
    Returns the results object written.
    """
    from privacy_audit.components.membership_inference import results
    from privacy_audit.components.membership_inference.slicing import SlicingSpec

    spec = SlicingSpec.from_names(slicing_names)
    check_output_path(output_path, [input_path])
    inputs = load_inputs(input_path)
    references = load_references(input_path)
    md = {"model_variant": os.path.splitext(os.path.basename(input_path))[0], "input": os.path.abspath(input_path)}
    md.update(metadata or {})
    obj = run_attacks(inputs, attacks, spec, seed=seed, min_slice_size=min_slice_size, metadata=md,
                      progress=progress, references=references, **kwargs)
    if not obj["results"]:
        # A results file without results would pass a gate that only checks the exit status.
        reasons = sorted({s.get("reason", "") for s in obj.get("skipped_slices", [])})
        raise ValueError(f"no slice could be evaluated ({inputs.n_members} members, {inputs.n_nonmembers} "
                         f"non-members; min_slice_size {min_slice_size}): {'; '.join(reasons)[:300]}; nothing written")
    results.write_results(output_path, obj)
    return obj


def _split_list(text: Optional[str]) -> List[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def add_attack_arguments(parser) -> None:
    """Registers the ``privacy-audit attack`` options on an argparse parser."""
    parser.description = ("Membership-inference attacks on saved model outputs. FILE is .npz or Parquet with "
                          "logits_train/logits_test (or probs_*) and labels_train/labels_test, or "
                          "loss_train/loss_test (train = members, test = non-members).")
    parser.add_argument("--input", required=True, metavar="FILE", help=".npz or .parquet attack inputs")
    parser.add_argument("--output", required=True, metavar="RESULTS_JSON", help="attack results JSON to write")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                        help="comma-separated: threshold, threshold_entropy, logistic_regression, mlp, "
                             "random_forest, knn; with reference models in the .npz (ref_logits [K, N, C], "
                             "ref_in_mask [K, N] over members then non-members): lira, lira_offline, rmia, "
                             "rmia_offline (default: %(default)s)")
    parser.add_argument("--reference-options", default=None, metavar="JSON",
                        help='options of the reference attacks, e.g. \'{"lira": {"fixed_variance": false}, '
                             '"rmia": {"gamma": 2, "offline_a": 0.33}}\' (default: LiRA fixed variance below '
                             '64 reference models, RMIA gamma 1, a 0.3)')
    parser.add_argument("--slicing", default="",
                        help="comma-separated: by_class, by_percentiles, by_classification_correctness, "
                             "feature:<key> (the entire data set is always attacked)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")
    parser.add_argument("--min-slice-size", type=int, default=20,
                        help="skip slices with fewer members or non-members (default: 20)")
    parser.add_argument("--delta", type=float, default=1e-5, help="δ for the ε lower bound (default: 1e-5)")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="confidence of the ε lower bound (default: 0.95)")
    parser.add_argument("--model-variant", default=None, help="metadata.model_variant (default: file name)")
    parser.add_argument("--epoch", type=int, default=None, help="metadata.epoch")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds of trained attacks")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def main_attack(args) -> int:
    """Runs the subcommand from parsed arguments; prints a summary; returns the exit status (2 on a user
    error, with a one-line message on stderr)."""
    try:
        if args.min_slice_size < 1:
            raise ValueError(f"--min-slice-size must be >= 1, got {args.min_slice_size}")
        if not 0 <= args.seed < 2 ** 32:
            raise ValueError(f"--seed must be in 0..2^32-1, got {args.seed}")
        if not 2 <= args.folds <= 100:
            raise ValueError(f"--folds must be in 2..100, got {args.folds}")
        if not 0.0 < args.confidence < 1.0:
            raise ValueError(f"--confidence must be in (0, 1), got {args.confidence}")
        if not 0.0 <= args.delta < 1.0:
            raise ValueError(f"--delta must be in [0, 1), got {args.delta}")
        from privacy_audit.components.membership_inference.attacks import AttackConfig

        config = AttackConfig(n_folds=args.folds)
        reference_options = None
        if args.reference_options:
            import json

            try:
                reference_options = json.loads(args.reference_options)
            except json.JSONDecodeError as e:
                raise ValueError(f"--reference-options must be a JSON object ({e})") from None
            if not isinstance(reference_options, dict):
                raise ValueError("--reference-options must be a JSON object like {\"lira\": {...}}")
        md: Dict[str, Any] = {}
        if args.model_variant is not None:
            md["model_variant"] = args.model_variant
        if args.epoch is not None:
            md["epoch"] = args.epoch
        t0 = time.perf_counter()
        obj = attack_file(args.input, args.output, _split_list(args.attacks), _split_list(args.slicing),
                          args.seed, args.min_slice_size, metadata=md,
                          progress=None if args.quiet else _stderr_progress, delta=args.delta,
                          confidence=args.confidence, config=config, reference_options=reference_options)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"privacy-audit attack: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the system refuses: named on one line, not a traceback
        print(f"privacy-audit attack: error: {e.strerror or e}: {e.filename or args.output}", file=sys.stderr)
        return 2
    results_list = obj["results"]
    best = max(results_list, key=lambda r: r["auc"]) if results_list else None
    print(f"wrote {args.output}: {len(results_list)} results, {len(obj['skipped_slices'])} skipped slices "
          f"in {time.perf_counter() - t0:.1f}s")
    if best is not None:
        from privacy_audit.components.membership_inference.slicing import slice_name

        print(f"max auc {best['auc']:.4f} ({best['attack']}, {slice_name(best['slice'])}); "
              f"max attacker_advantage {max(r['attacker_advantage'] for r in results_list):.4f}; "
              f"max epsilon_lower_bound {max(r['epsilon_lower_bound'] for r in results_list):.3f}")
    return 0
