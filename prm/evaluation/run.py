"""Evaluating PRM checkpoints (behind evaluate.py): ``evaluate(cfg)``.

The model is a checkpoint train.py wrote (``checkpoint=``: its config.yaml rebuilds backbone, head and
prompt format), or any model at ``backbone.path`` (``backbone=<config>``, ``prompt=<format>``, label
words from ``backbone.label_words``): a published PRM such as a DreamPRM-1.5 checkpoint in the
conversation layout, scored with the token head as it was trained.

Every candidate is scored once (all steps in one forward pass); best-of-N accuracy is then computed
for every aggregation at once from those scores, beside the baselines (random expectation, first
candidate, majority vote, pass@N). A ProcessBench test file gives the first-error metric instead.
A multirun directory evaluates every job of the sweep and writes a comparison table.

Which data: with ``checkpoint=``, the checkpoint's own data config (the ``data`` node of its
``config.yaml``: test split, ``max_length``, preflight policies, ``limit``) unless ``data=`` is given on
the command line; ``data.<key>=`` overrides given without ``data=`` apply on top of the checkpoint's
node. With ``backbone=``, conf/evaluate.yaml's ``data`` (``demo`` unless ``data=`` is given). Each job of
a multirun directory uses its own checkpoint's data. The choice and its reason are logged and written
to ``data.yaml`` beside the results (:func:`data_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prm import plots
from prm.checkpoint import VerifiedFolders, find_resume_checkpoint, resolve_checkpoint
from prm.config import BenchKind, BenchSchema, ConfigError, DataSchema, validate_evaluate_config
from prm.data.dataset import flatten_candidates
from prm.data.records import BestOfNProblem, LabelledChain
from prm.device import pick_device
from prm.errors import UserError
from prm.evaluation.best_of_n import accuracy_vs_n, best_of_n
from prm.evaluation.harness import Model, run_benchmarks
from prm.evaluation.processbench import choose_threshold, processbench
from prm.evaluation.report import write_best_of_n, write_processbench
from prm.evaluation.scorer import make_scorer
from prm.model.build import build_prm, load_prm
from prm.model.prm import ProcessRewardModel
from prm.preflight import preflight
from prm.tracking import Tracker

log = logging.getLogger("evaluate")


def detect_mode(records: list) -> str:
    if records and all(isinstance(record, BestOfNProblem) for record in records):
        return "best_of_n"
    if records and all(
        isinstance(record, LabelledChain) and record.first_error is not None for record in records
    ):
        return "processbench"
    raise UserError(
        "data.test holds neither best-of-N problems nor chains with known first errors (ProcessBench)"
    )


def command_line_overrides(overrides: Sequence[str] | None = None) -> list[Override]:
    """The overrides evaluate.py was given, parsed by Hydra's own override parser.

    ``overrides``: override strings such as ``["checkpoint=<dir>", "data.test=<file>"]``; None takes
    those of the running Hydra job (``HydraConfig.get().overrides.task``: the command line's, for a
    multirun job its own sweep values), or none outside a Hydra job (a programmatic call).
    """
    if overrides is None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return OverridesParser.create().parse_overrides(list(overrides))


def _data_group_given(overrides: Sequence[Override]) -> bool:
    """True when the overrides choose the ``data`` config group (``data=<name>``, ``+data=``, ...)."""
    return any(o.key_or_group == "data" and o.package is None for o in overrides)


def _apply_data_overrides(node: DictConfig, cfg: DictConfig, overrides: Sequence[Override]) -> list[str]:
    """Apply the ``data.<key>`` overrides to ``node`` (a data config) with the values Hydra composed into
    ``cfg`` (parsed, typed, interpolations resolved); ``~data.<key>`` removes the key. Returns the
    overrides applied, as given."""
    applied = []
    for o in overrides:
        if o.package is not None or not o.key_or_group.startswith("data."):
            continue
        key = o.key_or_group.removeprefix("data.")
        if o.is_delete():
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(node, parent_key) if parent_key else node
            if isinstance(parent, DictConfig) and leaf in parent:
                del parent[leaf]
        else:
            value = OmegaConf.select(cfg, o.key_or_group)
            if isinstance(value, DictConfig | list) or OmegaConf.is_list(value):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(node, key, value, merge=False, force_add=True)
        applied.append(o.input_line)
    return applied


def data_config(
    cfg: DictConfig, checkpoint: Path | None, overrides: Sequence[Override] = ()
) -> tuple[DictConfig, str]:
    """The evaluation config with the data config one model is evaluated on, and why that one.

    - ``checkpoint`` given and no ``data=`` among ``overrides``: the ``data`` node of the checkpoint's
      ``config.yaml`` (the run's test split, ``max_length``, preflight policies and ``limit``), with the
      ``data.<key>=`` overrides applied on top (see :func:`_apply_data_overrides`);
    - ``data=<name>`` among ``overrides``: ``cfg.data`` as composed (that config and its overrides);
    - ``checkpoint=None`` (``backbone=``, any model) or a checkpoint without ``config.yaml``:
      ``cfg.data`` (conf/evaluate.yaml's default ``demo`` unless ``data=`` was given).

    ``overrides``: from :func:`command_line_overrides`. Returns ``(config, reason)``: a copy of ``cfg``
    whose ``data`` is the chosen node, and one line saying where it comes from (logged, and written to
    ``data.yaml``). Raises ConfigError when the checkpoint's data node holds a key the data schema
    (:class:`prm.config.DataSchema`) does not know, a value the config checks refuse, or no test split
    (neither ``test`` nor a ``generator``).
    """
    name = cfg.data.name
    if _data_group_given(overrides):
        return cfg, f"data={name}: data= given on the command line"
    saved = checkpoint / "config.yaml" if checkpoint is not None else None
    if saved is None or not saved.is_file():
        why = "a model train.py never wrote" if saved is None else f"{checkpoint} has no config.yaml"
        return cfg, f"data={name}: conf/evaluate.yaml's data ({why}, no data= given)"
    loaded = OmegaConf.load(saved)
    if loaded.get("data") is None:
        return cfg, f"data={name}: conf/evaluate.yaml's data ({saved} has no data node, no data= given)"
    node = OmegaConf.create(OmegaConf.to_container(loaded.data, resolve=True))
    applied = _apply_data_overrides(node, cfg, overrides)
    try:
        data = OmegaConf.merge(OmegaConf.structured(DataSchema), node)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"{saved}: its data node does not fit the data schema ({error.msg}); give data=<config> to "
            "evaluate on another data config"
        ) from error
    if data.test is None and data.generator is None:
        raise ConfigError(
            f"data={data.name} from {saved} has no test split (data.test is null): give "
            "data.test=<file> (with the run's data config) or data=<config> data.test=<file>"
        )
    job = copy.deepcopy(cfg)
    job.data = data
    try:
        validate_evaluate_config(job)
    except ConfigError as error:
        raise ConfigError(f"the data node of {saved}: {error}") from error
    reason = f"data={data.name}: data from the checkpoint's config.yaml ({saved})"
    if applied:
        reason += f" with {' '.join(applied)} from the command line"
    return job, reason


def load_test(cfg: DictConfig, backbone):
    """The data config and its test records, read and checked by the preflight pass with ``backbone``'s
    chain format (over-long chains truncated or skipped per ``data.too_long``, every case counted;
    the report is logged and written to ``preflight.json`` beside the results by the caller).
    Returns ``(data, records, report)``."""
    data = instantiate(cfg.data)
    records, report = preflight(data, backbone, ("test",))
    return data, records["test"], report


def load_threshold_split(cfg: DictConfig, data, backbone) -> tuple[list | None, dict | None]:
    """The ProcessBench file ``processbench.threshold_split`` (None when the threshold is fixed or
    chosen on the test file), read and checked by the same preflight pass as the test file (same
    ``data.max_length`` and policies, so an over-long threshold chain is truncated, skipped or refused
    exactly like a test chain). Returns ``(records, report dict)`` or ``(None, None)``."""
    split = cfg.processbench.threshold_split
    if cfg.processbench.threshold is not None or split is None:
        return None, None
    threshold_data = dataclasses.replace(data, test=str(split), generator=None, limit=None)
    records, report = preflight(threshold_data, backbone, ("test",))
    return records["test"], report.as_dict()


def load_model(
    cfg: DictConfig, checkpoint: Path | None, device, verified: VerifiedFolders | None = None
) -> ProcessRewardModel:
    """The PRM of ``checkpoint`` (its config.yaml), or with ``checkpoint=None`` the model that
    ``cfg.backbone`` loads from ``backbone.path`` in the ``cfg.prompt`` format (default: marker) with
    the token head, i.e. P(+) renormalised over ``backbone.label_words``. ``verified``: the caller's
    record of checkpoint folders already hashed (:func:`prm.checkpoint.verify_checkpoint`)."""
    if checkpoint is not None:
        return load_prm(checkpoint, device, verified)
    prm = build_prm(cfg.backbone, head="token", prompt=cfg.get("prompt"))
    backbone = prm.backbone
    log.info(
        "%s: %s backbone (%s), prompt=%s, label words %s",
        cfg.backbone.path,
        backbone.family,
        backbone.model_type,
        backbone.prompt.name,
        list(backbone.label_words),
    )
    return prm.to(device)


def evaluate_checkpoint(
    cfg: DictConfig,
    checkpoint: Path | None,
    out_dir: Path,
    tracker: Tracker,
    test=None,
    data_source: str | None = None,
    verified: VerifiedFolders | None = None,
) -> dict:
    """Score the test split of ``cfg.data`` with one checkpoint (None: the model at ``backbone.path``,
    see :func:`load_model`); write results, plots, report.md and ``data.yaml`` (the data config used,
    headed by ``data_source``, the reason :func:`data_config` gives) into ``out_dir``; returns the result
    summary, whose ``preflight`` (also written to ``preflight.json``) holds ``data``: the name, test
    file, ``max_length`` and source of the data config the records were read and checked with.
    ``test``: (data, records, report) from :func:`load_test`, read here when not given. ``verified``:
    the caller's record of checkpoint folders already hashed.
    Raises UserError when the test records fit neither mode or fail the preflight checks."""
    device = pick_device(cfg.device)
    data_source = data_source or f"data={cfg.data.name}: as composed"
    log.info("%s", data_source)
    prm = load_model(cfg, checkpoint, device, verified)
    source = (
        checkpoint if checkpoint is not None else f"{cfg.backbone.path} (prompt={prm.backbone.prompt.name})"
    )
    data, records, report = test if test is not None else load_test(cfg, prm.backbone)
    mode = detect_mode(records) if cfg.mode == "auto" else cfg.mode
    log.info(
        "evaluating %s on %d %s records (%s) of %s, max_length %s",
        source,
        len(records),
        data.name,
        mode,
        data.test,
        data.max_length,
    )
    preflight_json = report.as_dict()  # {"test": counts, "warnings": [...]}
    used = {"name": data.name, "test": data.test, "max_length": data.max_length, "source": data_source}
    preflight_json["data"] = used  # what the counts were checked against
    tune = None
    if mode == "processbench":
        tune, tune_report = load_threshold_split(cfg, data, prm.backbone)
        if tune is not None:
            preflight_json["threshold_split"] = tune_report["test"]
            preflight_json["warnings"] += tune_report["warnings"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "preflight.json").write_text(json.dumps(preflight_json, indent=1), encoding="utf-8")
    (out_dir / "data.yaml").write_text(
        f"# {data_source}\n# test file: {data.test}\n" + OmegaConf.to_yaml(cfg.data, resolve=True),
        encoding="utf-8",
    )

    # the local model, or a running service with server.url (prm/evaluation/scorer.py)
    score = make_scorer(cfg.get("server"), prm, data, device, cfg.precision)
    title = f"Evaluation of {source}"
    if mode == "best_of_n":
        table, summary = evaluate_best_of_n(cfg, records, score, data.name, out_dir, tracker, title)
    else:
        table, summary = evaluate_processbench(cfg, records, score, data.name, out_dir, tracker, title, tune)
    print(table)
    log.info("results written to %s", out_dir)
    return {**summary, "preflight": preflight_json}


def evaluate_best_of_n(cfg, records, score, name, out_dir: Path, tracker: Tracker, title: str):
    """Best-of-N accuracy of every aggregation and baseline, accuracy against N; (table, summary)."""
    chains = flatten_candidates(records)
    flat = score(chains, prefix_sharing=cfg.prefix_sharing)  # siblings share the encoded prefix
    grouped, start = [], 0
    for problem in records:
        grouped.append(flat[start : start + len(problem.candidates)])
        start += len(problem.candidates)
    result = best_of_n(records, grouped)
    curve = accuracy_vs_n(records, grouped)
    table = write_best_of_n(result, out_dir, curve)
    rows = [[name, "aggregation", r.accuracy, r.ties] for name, r in result.aggregations.items()]
    rows += [[name, "weighted vote", r.accuracy, r.ties] for name, r in result.weighted_vote.items()]
    rows += [[name, "baseline", r.accuracy, r.ties] for name, r in result.baselines.items()]
    tracker.log_table("best_of_n/accuracy", ["method", "kind", "accuracy", "ties"], rows)
    curve_dict = curve.to_dict()
    methods = {
        **curve_dict["aggregations"],
        **{f"weighted_vote/{name}": values for name, values in curve_dict["weighted_vote"].items()},
        **curve_dict["baselines"],
    }
    tracker.log_table(
        "best_of_n/accuracy_vs_n",
        ["n", *methods],
        [[n, *(values[i] for values in methods.values())] for i, n in enumerate(curve_dict["n"])],
    )
    image = plots.plot_accuracy_vs_n(
        curve_dict, out_dir / "accuracy_vs_n.png", highlight=cfg.aggregation.name
    )
    plots.write_report(out_dir, title, [("Best-of-N", table)], [image])
    return table, result.to_dict()


def evaluate_processbench(
    cfg, records, score, name, out_dir: Path, tracker: Tracker, title: str, tune: list | None = None
):
    """ProcessBench first-error F1 at a fixed threshold (``processbench.threshold``) or one chosen to
    maximise F1 on ``tune`` (the checked records of ``processbench.threshold_split``, see
    :func:`load_threshold_split`) or, when that is None, on the test records themselves;
    (table, summary). Raises UserError when the tuning records hold only one class."""
    scores = score(records)
    first_errors = [record.first_error for record in records]
    threshold = cfg.processbench.threshold
    if threshold is None:
        split = cfg.processbench.threshold_split
        if tune is None:
            tune = records
            tune_scores = scores
        else:
            tune_scores = score(tune)
        tune_errors = [record.first_error for record in tune]
        if len({error >= 0 for error in tune_errors}) < 2:
            raise UserError(
                f"processbench.threshold=null chooses the threshold on {split or 'data.test'}, which holds "
                "only erroneous or only correct chains: set processbench.threshold=<value> or "
                "processbench.threshold_split=<a ProcessBench file with both>"
            )
        threshold = choose_threshold(tune_scores, tune_errors)
        log.info("threshold %.4f chosen on %s", threshold, split or "the test split itself")
    result = processbench(scores, first_errors, threshold)
    table = write_processbench({name: result}, out_dir)
    summary = result.to_dict()
    tracker.log_table("processbench", ["subset", *summary], [[name, *summary.values()]])
    plots.write_report(out_dir, title, [("ProcessBench", table)], [])
    return table, summary


def sweep_jobs(path: Path, verified: VerifiedFolders | None = None) -> list[Path]:
    """The job directories of a Hydra multirun directory (those with a checkpoint), else [].
    ``verified``: the caller's record of checkpoint folders already hashed."""
    if not (path / "multirun.yaml").exists():
        return []
    jobs = [job for job in path.iterdir() if (job / ".hydra" / "overrides.yaml").exists()]
    return sorted(
        (job for job in jobs if find_resume_checkpoint(job, verified) is not None),
        key=lambda job: int(job.name) if job.name.isdigit() else job.name,
    )


def job_overrides(job: Path) -> list[str]:
    """The command-line overrides of multirun job ``job`` (its ``.hydra/overrides.yaml``), Hydra's own
    (``hydra.*``) left out."""
    return [o for o in OmegaConf.load(job / ".hydra" / "overrides.yaml") if not o.startswith("hydra.")]


def compare_sweep(
    cfg: DictConfig,
    jobs: list[Path],
    out_dir: Path,
    tracker: Tracker,
    overrides: Sequence[Override] = (),
    verified: VerifiedFolders | None = None,
) -> dict:
    """Evaluate every job of a sweep, then one comparison table (job overrides as rows) and plot.
    Each job is evaluated on its own checkpoint's data config unless ``overrides`` (evaluate.py's, see
    :func:`command_line_overrides`) choose ``data=`` (:func:`data_config`). ``verified``: the caller's
    record of checkpoint folders already hashed."""
    results = {}  # each job's test set is checked with its own backbone's chain format
    for job in jobs:
        chosen = job_overrides(job)
        checkpoint = resolve_checkpoint(job, verified)
        job_cfg, source = data_config(cfg, checkpoint, overrides)
        summary = evaluate_checkpoint(
            job_cfg, checkpoint, out_dir / job.name, tracker, data_source=source, verified=verified
        )
        results[job.name] = {"overrides": " ".join(chosen) or "(defaults)", **summary}
    tests = sorted({str(r["preflight"]["data"]["test"]) for r in results.values()})
    if len(tests) > 1:
        log.warning(
            "the jobs were evaluated on %d different test sets (each on its own data config: %s), so "
            "their accuracies compare different problems; give data=<config> to evaluate all on one",
            len(tests),
            ", ".join(tests),
        )
    if not all("aggregations" in r for r in results.values()):
        raise ValueError("sweep comparison needs best-of-N test records")
    headline = cfg.aggregation.name
    names = list(next(iter(results.values()))["aggregations"])
    lines = [
        f"# Sweep comparison: best-of-N accuracy (%) of {len(jobs)} jobs",
        "",
        "| job | overrides | " + " | ".join(names) + " | random | majority_vote | pass_at_n |",
        "|---|---|" + "---:|" * (len(names) + 3),
    ]
    for job, r in results.items():
        cells = [f"{100 * r['aggregations'][n]['accuracy']:.2f}" for n in names]
        cells += [
            f"{100 * r['baselines'][b]['accuracy']:.2f}" for b in ("random", "majority_vote", "pass_at_n")
        ]
        lines.append(f"| {job} | {r['overrides']} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (out_dir / "comparison.md").write_text(markdown, encoding="utf-8")
    (out_dir / "comparison.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    first = next(iter(results.values()))
    image = plots.plot_comparison(
        [r["overrides"] for r in results.values()],
        [r["aggregations"][headline]["accuracy"] for r in results.values()],
        {b: first["baselines"][b]["accuracy"] for b in ("random", "majority_vote", "pass_at_n")},
        out_dir / "comparison.png",
        title=f"Best-of-N, {headline} aggregation",
    )
    plots.write_report(
        out_dir, "Sweep comparison", [("Best-of-N per job", markdown.split("\n", 2)[2])], [image]
    )
    tracker.log_table(
        "sweep/best_of_n",
        ["job", "overrides", *names],
        [
            [job, r["overrides"], *(r["aggregations"][n]["accuracy"] for n in names)]
            for job, r in results.items()
        ],
    )
    print(markdown)
    return results


STEP_BENCHMARK_FORMATS = ("prmbench", "visualprocessbench")  # test files evaluated through the harness


def single_file_bench(cfg: DictConfig, data_node: DictConfig) -> DictConfig | None:
    """For ``data.test=<a PRMBench or VisualProcessBench file>`` without ``bench=``: the one-entry
    ``bench`` node that scores that file through :mod:`prm.evaluation.harness` (same table and
    report as ``bench=``), else None. Threshold: ``processbench.threshold`` when set, else chosen on
    ``processbench.threshold_split`` when set, else 0.5 (the benchmarks' presets)."""
    test = data_node.get("test")
    if test is None or data_node.get("generator") is not None:
        return None
    fmt = data_node.get("test_format") or data_node.get("format") or "auto"
    if fmt == "auto":
        from prm.data.formats import detect_format

        try:
            fmt = detect_format(test)
        except Exception:  # noqa: BLE001 - the normal path reports an unreadable file with its context
            return None
    if fmt not in STEP_BENCHMARK_FORMATS:
        return None
    path = Path(test)
    threshold, split = cfg.processbench.threshold, cfg.processbench.threshold_split
    spec = BenchSchema(
        kind=BenchKind(fmt),
        root=str(path.parent),
        subsets=[path.name],
        threshold=threshold if threshold is not None or split is not None else 0.5,
        threshold_split=split if threshold is None else None,
    )
    return OmegaConf.create({fmt: OmegaConf.structured(spec)})


def _label(path: Path, taken: set[str]) -> str:
    """A short unique column label for a model at ``path``: its last two path parts (a run directory
    ``outputs/<date>/<time>``), suffixed ``#2``, ``#3`` when taken."""
    label = "/".join(path.resolve().parts[-2:])
    unique, count = label, 1
    while unique in taken:
        count += 1
        unique = f"{label}#{count}"
    taken.add(unique)
    return unique


FOREIGN_KEYS = ("backbone", "path", "prompt", "label_words", "name")


def foreign_model_config(cfg: DictConfig, entry: DictConfig, where: str) -> DictConfig:
    """``cfg`` with the backbone and prompt of a ``compare`` entry that names a model train.py never
    wrote: ``{backbone: <conf/backbone option>, path: <dir>, prompt: <conf/prompt option>,
    label_words: [...], name: <column label>}``, composed by Hydra from ``conf/`` as
    ``backbone=<option> backbone.path=<dir>`` would be. Raises ConfigError naming the entry for an
    unknown key, a missing ``backbone`` / ``path``, or an option that does not compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    unknown = sorted(set(entry) - set(FOREIGN_KEYS))
    if unknown or not entry.get("backbone") or not entry.get("path"):
        raise ConfigError(
            f"{where}: a model train.py never wrote is {{backbone: <config>, path: <dir>, prompt: <format>, "
            f"label_words: [..], name: <label>}} (backbone and path required); got {dict(entry)}"
        )
    overrides = [f"backbone={entry.backbone}", f"backbone.path={entry.path}"]
    if entry.get("prompt"):
        overrides.append(f"prompt={entry.prompt}")
    if entry.get("label_words"):
        overrides.append(f"backbone.label_words=[{','.join(map(str, entry.label_words))}]")
    try:
        if GlobalHydra.instance().is_initialized():
            composed = compose("evaluate", overrides=overrides)
        else:
            with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
                composed = compose("evaluate", overrides=overrides)
    except HydraException as error:
        raise ConfigError(f"{where}: {' '.join(overrides)} does not compose: {error}") from error
    model_cfg = copy.deepcopy(cfg)
    OmegaConf.set_struct(model_cfg, False)
    model_cfg.backbone, model_cfg.prompt = composed.backbone, composed.prompt
    OmegaConf.set_struct(model_cfg, True)
    return model_cfg


def job_labels(jobs: Sequence[Path]) -> list[str]:
    """A column label per multirun job: ``job <n>: <the overrides that differ between the jobs>``
    (``job <n>`` alone when none differ), from each job's ``.hydra/overrides.yaml``."""
    overrides = [
        dict(item.split("=", 1) if "=" in item else (item, "") for item in job_overrides(job)) for job in jobs
    ]
    keys = sorted({key for job in overrides for key in job})
    differing = [key for key in keys if len({job.get(key) for job in overrides}) > 1]
    labels = []
    for job, values in zip(jobs, overrides):
        shown = ",".join(f"{key}={values[key]}" for key in differing if key in values)
        labels.append(f"job {job.name}: {shown}" if shown else f"job {job.name}")
    return labels


def bench_models(
    cfg: DictConfig,
    target: Path,
    any_model: bool,
    jobs: list[Path],
    overrides: Sequence[Override],
    verified: VerifiedFolders,
) -> list[Model]:
    """The models of a ``bench=`` evaluation, one column each, in order: the ``backbone=`` model, or
    the checkpoint (every job of a multirun directory), then each entry of ``compare`` (a checkpoint
    path, or a model train.py never wrote, see :func:`foreign_model_config`). A checkpoint comes with
    the data config :func:`data_config` gives it (policies and ``max_length`` for the benchmark
    files); a model train.py never wrote with ``cfg.data``. Raises ConfigError for a multirun
    directory in ``compare`` or a bad foreign entry."""
    taken: set[str] = set()
    models = []
    as_composed = f"data={cfg.data.name}: as composed"
    if any_model:
        models.append(Model(_label(target, taken), None, cfg, as_composed))
    entries: list = list(zip(jobs, job_labels(jobs)))
    entries += [] if any_model or jobs else [(target, "checkpoint")]
    entries += [(entry, f"compare[{position}]") for position, entry in enumerate(cfg.compare)]
    for entry, name in entries:
        if isinstance(entry, DictConfig):
            label = entry.get("name") or _label(Path(entry.get("path") or "model"), taken)
            models.append(Model(label, None, foreign_model_config(cfg, entry, name), as_composed))
            continue
        path = Path(entry)
        if not name.startswith("job ") and sweep_jobs(path, verified):
            raise ConfigError(f"{name}={path} is a multirun directory: give it as checkpoint= instead")
        checkpoint = resolve_checkpoint(path, verified)
        job_cfg, source = data_config(cfg, checkpoint, overrides)
        label = name if name.startswith("job ") else _label(path, taken)
        models.append(Model(label, checkpoint, job_cfg, source))
    return models


def evaluate(
    cfg: DictConfig, out_dir: str | Path | None = None, overrides: Sequence[str] | None = None
) -> dict:
    """One checkpoint (or run directory), every job of a multirun directory, or (``backbone=`` with
    ``backbone.path=``) any model. Raises ConfigError for an invalid combination (see
    :func:`prm.config.validate_evaluate_config`). ``out_dir``: where results go (default: Hydra's
    output directory, else ``<checkpoint>/eval``, else ``outputs/eval``).

    ``overrides``: the override strings ``cfg`` was composed with, which decide the data config (a
    checkpoint's own unless they hold ``data=``, see :func:`data_config`); None: the running Hydra
    job's command line, or none outside Hydra (then a checkpoint is evaluated on its own data, with
    no ``data.<key>`` overrides)."""
    validate_evaluate_config(cfg)
    given = command_line_overrides(overrides)
    any_model = cfg.get("backbone") is not None
    target = Path(cfg.backbone.path if any_model else cfg.checkpoint)
    if out_dir is not None:
        out_dir = Path(out_dir)
    elif HydraConfig.initialized():
        out_dir = Path(HydraConfig.get().runtime.output_dir)
    else:
        out_dir = Path("outputs/eval") if any_model else target / "eval"
    verified: VerifiedFolders = {}  # checkpoints hashed by this evaluation: each is read once
    jobs = [] if any_model else sweep_jobs(target, verified)
    checkpoint = None if any_model or jobs else resolve_checkpoint(target, verified)
    job_cfg, source = data_config(cfg, checkpoint, given) if not jobs else (cfg, None)
    tracker = instantiate(cfg.logger)
    tracker.start(
        out_dir,
        OmegaConf.to_container(job_cfg, resolve=True, enum_to_str=True),
        job_type="evaluate",
        name=f"eval-{target.name}",
    )
    single = None if cfg.get("bench") or jobs else single_file_bench(cfg, job_cfg.data)
    if single is not None:
        cfg = copy.deepcopy(cfg)
        cfg.bench = single
    try:
        if cfg.get("bench"):
            models = bench_models(cfg, target, any_model, jobs, given, verified)
            return run_benchmarks(
                cfg,
                models,
                out_dir,
                tracker,
                lambda model, device: load_model(model.cfg, model.checkpoint, device, verified),
            )
        if cfg.get("compare"):
            raise ConfigError(
                "compare=[...] goes with bench=[...]: the checkpoints are compared on benchmarks"
            )
        if jobs:
            if cfg.get("server") is not None and cfg.server.get("url"):
                raise ConfigError(
                    f"server.url serves one model and {target} is a multirun directory of {len(jobs)}: "
                    "give one job's checkpoint, or drop server.url"
                )
            log.info("%s is a multirun directory: evaluating its %d jobs", target, len(jobs))
            return compare_sweep(cfg, jobs, out_dir, tracker, given, verified)
        return evaluate_checkpoint(
            job_cfg, checkpoint, out_dir, tracker, data_source=source, verified=verified
        )
    finally:
        tracker.finish()
