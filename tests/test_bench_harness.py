"""evaluate.py bench=[...]: every benchmark and every model in one run, one table (prm/evaluation/harness.py).

The figures in the table must be the benchmark metrics of the model's own scores: each test scores
the same records again with :func:`prm.evaluation.scoring.score_chains` (the same code path, so the
same floats) and recomputes the metric with the tested metric functions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import compose_config

FIXTURES = Path(__file__).parent / "fixtures"
PROCESSBENCH = FIXTURES / "processbench_tiny"  # gsm8k.json, math.json: 4 chains each, 2 erroneous


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny text-only PRM trained 2 steps on a small demo; its run directory (about 10 s)."""
    from prm.training import train

    folder = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRM_CACHE_DIR", str(folder / "cache"))
        overrides = [
            "experiment=smoke",
            "backbone=tiny_qwen2",
            "train.steps=2",
            "logger=none",
            "data.generator.train_per_domain=4",
            "data.generator.meta_size=4",
            "data.generator.test_problems=3",
            "data.generator.n_candidates=3",
            "data.limit.test=2",  # the run's own test split: 2 of 3 problems; never a benchmark file's
        ]
        train(compose_config(*overrides), run_dir=folder / "run")
    return folder / "run"


def evaluate(overrides: list[str], out_dir: Path) -> dict:
    from prm.evaluation.run import evaluate as run_evaluate

    return run_evaluate(compose_config(*overrides, name="evaluate"), out_dir=out_dir, overrides=overrides)


def rescore(checkpoint: Path, path: Path, fmt: str) -> tuple[list, list]:
    """The checked records of ``path`` and their step scores, as the harness computes them."""
    import dataclasses

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from prm.checkpoint import resolve_checkpoint
    from prm.evaluation.scoring import score_chains
    from prm.model.build import load_prm
    from prm.preflight import preflight

    resolved = resolve_checkpoint(checkpoint)
    prm = load_prm(resolved, "cpu")
    node = OmegaConf.load(resolved / "config.yaml").data
    data = dataclasses.replace(instantiate(node), test=str(path), test_format=fmt, generator=None, limit=None)
    records = preflight(data, prm.backbone, ("test",))[0]["test"]
    scores = score_chains(prm, records, data.eval_batch_size, data.max_length, "cpu", "fp32")
    return records, scores


def test_processbench_subsets_threshold_on_a_named_subset_and_two_models(run, tmp_path):
    from prm.evaluation.processbench import choose_threshold, processbench

    other = tmp_path / "other_run"  # the same checkpoint under another name: a second column
    shutil.copytree(run, other)
    overrides = [
        f"checkpoint={run}",
        f"compare=[{other}]",
        "bench=processbench",
        f"bench.processbench.root={PROCESSBENCH}",
        "bench.processbench.threshold_split=gsm8k",
        "device=cpu",
        "logger=none",
    ]
    summary = evaluate(overrides, tmp_path / "eval")
    tune_records, tune_scores = rescore(run, PROCESSBENCH / "gsm8k.json", "processbench")
    threshold = choose_threshold(tune_scores, [r.first_error for r in tune_records])
    assert len(summary["models"]) == 2
    for model in summary["models"].values():
        for subset in ("gsm8k", "math"):
            records, scores = rescore(run, PROCESSBENCH / f"{subset}.json", "processbench")
            expected = processbench(scores, [r.first_error for r in records], threshold)
            entry = model["benchmarks"]["processbench"][subset]
            assert entry["threshold"] == threshold
            assert entry["threshold_chosen_on"] == "subset gsm8k"
            assert entry["rows"]["headline"] == expected.f1
            assert entry["result"]["error_accuracy"] == expected.error_accuracy
            assert entry["cost"]["chains"] == 4 and entry["cost"]["steps"] == sum(
                len(r.steps) for r in records
            )
            assert entry["cost"]["tokens"] > 0 and entry["cost"]["chains_per_second"] > 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| processbench | gsm8k | F1 (%) |" in report  # one row per subset, in-sample mark on gsm8k
    first = next(iter(summary["models"].values()))["benchmarks"]["processbench"]
    assert f"{100 * first['gsm8k']['rows']['headline']:.2f}*" in report  # in-sample mark
    # the published means are over the same two subsets: Qwen2.5-Math-PRM-7B (82.4 + 77.6) / 2 = 80.0
    assert "| | mean of 2 subsets | F1 (%) |" in report and "| 80.0 | 53.5 |" in report
    assert "Qwen2.5-Math-PRM-7B (published)" in report and "82.4" in report  # the preset's references
    assert "chains/s" in report and "peak memory" in report
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["models"].keys() == summary["models"].keys()


def test_best_of_n_on_the_models_own_test_split(run, tmp_path):
    overrides = [f"checkpoint={run}", "bench=best_of_n", "device=cpu", "logger=none"]
    summary = evaluate(overrides, tmp_path / "eval")
    (model,) = summary["models"].values()
    entry = model["benchmarks"]["best_of_n"]["test"]
    assert entry["result"]["problems"] == 2  # the run's data.limit.test applies to its own test split
    assert entry["rows"]["headline"] == entry["result"]["aggregations"]["mean"]["accuracy"]
    assert entry["rows"]["weighted vote (mean)"] == entry["result"]["weighted_vote"]["mean"]["accuracy"]
    assert entry["cost"]["chains"] == 6  # 2 problems x 3 candidates, every candidate scored once


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "bench.processbench.root is not set"),
        (
            [f"bench.processbench.root={PROCESSBENCH}", "bench.processbench.subsets=[gsm8k,aime]"],
            "no file for 'aime'",
        ),
        (
            [f"bench.processbench.root={PROCESSBENCH}", "bench.processbench.threshold_split=null"],
            "threshold_split=",
        ),
        (
            [f"bench.processbench.root={PROCESSBENCH}", "bench.processbench.threshold=1.5"],
            "must be null or in [0, 1]",
        ),
        (
            [f"bench.processbench.root={PROCESSBENCH}", "bench.processbench.references=[GPT-5]"],
            "no published",
        ),
        (
            [f"bench.processbench.root={PROCESSBENCH}", "bench.processbench.threshold_split=aime"],
            "neither a subset",
        ),
    ],
)
def test_bad_bench_configs_name_the_key(run, tmp_path, extra, message):
    from prm.config import ConfigError

    overrides = [f"checkpoint={run}", "bench=processbench", "device=cpu", "logger=none", *extra]
    with pytest.raises(ConfigError, match=None) as error:
        evaluate(overrides, tmp_path / "eval")
    assert message in str(error.value)


def test_compare_without_bench_is_refused(run, tmp_path):
    from prm.config import ConfigError

    with pytest.raises(ConfigError, match="goes with bench"):
        evaluate([f"checkpoint={run}", f"compare=[{run}]", "device=cpu", "logger=none"], tmp_path / "eval")


def test_three_step_benchmarks_in_one_command(run, tmp_path):
    """ProcessBench, PRMBench and VisualProcessBench fixtures scored in one run: each headline is its
    metric of the model's own scores at the preset threshold (0.5 for PRMBench / VisualProcessBench)."""
    from prm.data.records import PRMBenchRecord, VisualProcessBenchRecord
    from prm.evaluation.prmbench import prmbench
    from prm.evaluation.visualprocessbench import visualprocessbench

    formats = FIXTURES / "formats"
    overrides = [
        f"checkpoint={run}",
        "bench=[processbench,prmbench,visualprocessbench]",
        f"bench.processbench.root={PROCESSBENCH}",
        f"bench.prmbench.root={formats}",
        "bench.prmbench.subsets=[prmbench]",
        f"bench.visualprocessbench.root={formats}",
        "bench.visualprocessbench.subsets=[visualprocessbench]",
        "device=cpu",
        "logger=none",
    ]
    summary = evaluate(overrides, tmp_path / "eval")
    (model,) = summary["models"].values()
    records, scores = rescore(run, formats / "prmbench.jsonl", "prmbench")
    expected = prmbench(scores, [PRMBenchRecord.from_chain(r) for r in records], 0.5)
    entry = model["benchmarks"]["prmbench"]["prmbench"]
    assert entry["rows"]["headline"] == expected.prm_score and entry["threshold_chosen_on"] == "fixed"
    assert (
        entry["cost"]["chains"] == 7
    )  # 5 records + 2 correct processes: the run's data.limit does not apply
    records, scores = rescore(run, formats / "visualprocessbench.jsonl", "visualprocessbench")
    expected = visualprocessbench(scores, [VisualProcessBenchRecord.from_chain(r) for r in records], 0.5)
    entry = model["benchmarks"]["visualprocessbench"]["visualprocessbench"]
    assert entry["rows"]["headline"] == expected.macro_f1
    assert {label for label in entry["rows"] if label != "headline"} == set(expected.sources)
    report = (tmp_path / "eval" / "report.md").read_text()
    for row in ("| prmbench | prmbench | PRMScore (%) |", "| visualprocessbench | visualprocessbench |"):
        assert row in report
    # the cost table says what the reader added and that a text-only model did not read the images
    assert "| 7/5 (2 added_correct_process) |" in report and "(5 images_ignored_text_only)" in report
    assert f"{100 * entry['rows']['headline']:.2f}‡" in report and "‡ a text-only model" in report
    assert "VisualPRM-8B (published)" in report and "Published prmbench" in report


def test_a_prmbench_test_file_alone_goes_through_the_same_table(run, tmp_path):
    """evaluate.py data=prmbench data.test=<file> (no bench=): the harness's table at 0.5."""
    from prm.data.records import PRMBenchRecord
    from prm.evaluation.prmbench import prmbench

    path = FIXTURES / "formats" / "prmbench.jsonl"
    overrides = [f"checkpoint={run}", "data=prmbench", f"data.test={path}", "device=cpu", "logger=none"]
    summary = evaluate(overrides, tmp_path / "eval")
    records, scores = rescore(run, path, "prmbench")
    expected = prmbench(scores, [PRMBenchRecord.from_chain(r) for r in records], 0.5)
    entry = next(iter(summary["models"].values()))["benchmarks"]["prmbench"]["prmbench"]
    assert entry["rows"]["headline"] == expected.prm_score
    assert (tmp_path / "eval" / "report.md").is_file()


def test_a_model_train_py_never_wrote_is_one_more_column(run, tmp_path):
    """compare=[{backbone, path, prompt, name}]: a foreign model beside the checkpoint, scored exactly as
    evaluate.py backbone=<config> backbone.path=<dir> prompt=<format> scores it alone."""
    from tests.test_prompts import save_tiny_llama

    model_dir = tmp_path / "llama"
    save_tiny_llama(model_dir)
    bench = ["bench=processbench", f"bench.processbench.root={PROCESSBENCH}", "device=cpu", "logger=none"]
    bench.append("bench.processbench.data.max_length=4096")  # its byte-level chains are long
    entry = f"{{backbone:hf_causal_lm,path:'{model_dir}',prompt:conversation,name:llama}}"
    both = evaluate([f"checkpoint={run}", f"compare=[{entry}]", *bench], tmp_path / "both")
    alone = evaluate(
        ["backbone=hf_causal_lm", f"backbone.path={model_dir}", "prompt=conversation", *bench],
        tmp_path / "alone",
    )
    assert list(both["models"]) == [f"{run.parent.name}/{run.name}", "llama"]
    (single,) = alone["models"].values()
    for subset in ("gsm8k", "math"):
        got = both["models"]["llama"]["benchmarks"]["processbench"][subset]
        want = single["benchmarks"]["processbench"][subset]
        assert (got["rows"], got["threshold"]) == (want["rows"], want["threshold"])
    assert "| llama |" in (tmp_path / "both" / "report.md").read_text()


def test_a_bad_compare_entry_names_itself(run, tmp_path):
    from prm.config import ConfigError

    bench = ["bench=processbench", f"bench.processbench.root={PROCESSBENCH}", "device=cpu", "logger=none"]
    with pytest.raises(ConfigError, match=r"compare\[0\]: a model train.py never wrote"):
        evaluate([f"checkpoint={run}", "compare=[{path:/x}]", *bench], tmp_path / "eval")


def test_a_threshold_split_of_one_class_names_the_benchmark(run, tmp_path):
    from prm.errors import UserError

    one_class = tmp_path / "one_class.json"  # the correct chains of the gsm8k fixture only
    one_class.write_text(
        json.dumps([r for r in json.loads((PROCESSBENCH / "gsm8k.json").read_text()) if r["label"] == -1])
    )
    overrides = [
        f"checkpoint={run}",
        "bench=processbench",
        f"bench.processbench.root={PROCESSBENCH}",
        f"bench.processbench.threshold_split={one_class}",
        "device=cpu",
        "logger=none",
    ]
    with pytest.raises(UserError, match=r"bench.processbench.threshold_split=.*cannot choose a threshold on"):
        evaluate(overrides, tmp_path / "eval")


def test_best_of_n_takes_no_threshold(run, tmp_path):
    from prm.config import ConfigError

    overrides = [f"checkpoint={run}", "bench=best_of_n", "bench.best_of_n.threshold=0.3", "logger=none"]
    with pytest.raises(ConfigError, match="no step threshold"):
        evaluate(overrides, tmp_path / "eval")


def test_multirun_job_labels_show_the_overrides_that_differ(tmp_path):
    from prm.evaluation.run import job_labels

    jobs = []
    for number, aggregation in enumerate(("mean", "min")):
        job = tmp_path / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            f"- aggregation={aggregation}\n- experiment=smoke\n- hydra.job.chdir=false\n"
        )
        jobs.append(job)
    assert job_labels(jobs) == ["job 0: aggregation=mean", "job 1: aggregation=min"]
    assert job_labels(jobs[:1]) == ["job 0"]


def test_a_bench_limit_is_said_in_the_cost_table(run, tmp_path):
    overrides = [
        f"checkpoint={run}",
        "bench=processbench",
        f"bench.processbench.root={PROCESSBENCH}",
        "bench.processbench.threshold=0.5",
        "bench.processbench.threshold_split=null",
        "bench.processbench.limit=2",
        "device=cpu",
        "logger=none",
    ]
    summary = evaluate(overrides, tmp_path / "eval")
    entry = next(iter(summary["models"].values()))["benchmarks"]["processbench"]["gsm8k"]
    assert entry["cost"]["chains"] == 2 and entry["threshold_chosen_on"] == "fixed"
    assert "| 2/4 (2 of 4 by limit) |" in (tmp_path / "eval" / "report.md").read_text()
