"""The preflight pass: length, image, special-token and label policies, counted and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from prm.check import main as check_main
from prm.data.dataset import PRMCollator
from prm.data.errors import RecordError
from prm.data.images import fix_geometry, load_image, to_rgb
from prm.data.native import read_native
from prm.data.readers import read_mmprm_seeds
from prm.data.records import LabelledChain, StepChain
from prm.data.sources import DataSources
from prm.errors import UserError
from prm.model.backbones import build_backbone
from prm.preflight import ZERO_WIDTH_SPACE, PreflightError, check_unique_ids, preflight

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def text_backbone():
    return build_backbone("qwen2")


@pytest.fixture(scope="module")
def vl_backbone():
    return build_backbone("qwen2_vl")


def _native(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r.to_dict() if hasattr(r, "to_dict") else r) + "\n" for r in records))
    return str(path)


def _chain(id, steps, labels=None, question="What is 2 + 2?", images=()):
    labels = [1.0] * len(steps) if labels is None else labels
    return StepChain(id=id, question=question, steps=steps, labels=labels, images=list(images))


def _meta(id, label, steps=("a",), first_error=None, images=()):
    return LabelledChain(
        id=id, question="Q?", steps=list(steps), label=label, first_error=first_error, images=list(images)
    )


def _length(backbone, chain):
    batch = PRMCollator(backbone)(
        [{"chain": chain, "instance": 0, "domain": 0, "images": list(chain.images)}]
    )
    return int(batch["inputs"]["attention_mask"][0].sum())


def _sources(tmp_path, train=None, meta=None, **options):
    return DataSources(
        train=_native(tmp_path / "train.jsonl", train) if train is not None else None,
        meta=_native(tmp_path / "meta.jsonl", meta) if meta is not None else None,
        format="native",
        **options,
    )


META = [_meta("m0", 0), _meta("m1", 1)]
STEPS = ["two plus two", "is four", "so the answer", "is 4 indeed"]


# --------------------------------------------------------------------------- length


def test_truncate_drops_whole_trailing_steps_and_counts_lost_labels(tmp_path, text_backbone):
    long = _chain("long", STEPS, labels=[1.0, None, 0.0, 0.5])
    limit = _length(text_backbone, _chain("x", STEPS[:2], labels=[1.0, None]))
    assert _length(text_backbone, long) > limit
    data = _sources(tmp_path, [long, _chain("short", STEPS[:1])], META, max_length=limit)
    cleaned, report = preflight(data, text_backbone)
    kept = cleaned["train"][0]
    assert (kept.id, kept.question, kept.steps, kept.labels) == (
        "long",
        long.question,
        STEPS[:2],
        [1.0, None],
    )
    counts = report.as_dict()["train"]
    assert counts == {"read": 2, "kept": 2, "truncated": 1, "steps_dropped": 2, "labels_lost": 2}
    assert _length(text_backbone, kept) <= limit
    assert "1 truncated (e.g. record 0 (id 'long')" in report.summary()


def test_skip_policy_drops_and_counts(tmp_path, text_backbone):
    limit = _length(text_backbone, _chain("x", STEPS[:2]))
    data = _sources(tmp_path, [_chain("long", STEPS), _chain("short", STEPS[:1])], META, max_length=limit)
    data.too_long = "skip"
    cleaned, report = preflight(data, text_backbone)
    assert [c.id for c in cleaned["train"]] == ["short"]
    assert report.as_dict()["train"] == {"read": 2, "kept": 1, "skipped_too_long": 1}


def test_error_policy_names_every_long_chain_before_anything_runs(tmp_path, text_backbone):
    limit = _length(text_backbone, _chain("x", STEPS[:2]))
    train = [_chain("long1", STEPS), _chain("short", STEPS[:1]), _chain("long2", STEPS[::-1])]
    data = _sources(tmp_path, train, META, max_length=limit, too_long="error")
    with pytest.raises(PreflightError) as caught:
        preflight(data, text_backbone)
    text = str(caught.value)
    assert text.startswith(f"2 chain(s) over data.max_length={limit} tokens (data.too_long=error): ")
    assert f"data.train {tmp_path / 'train.jsonl'} record 0 (id 'long1')" in text
    assert "record 2 (id 'long2')" in text and "'short'" not in text
    assert isinstance(caught.value, UserError)


def test_question_alone_over_the_limit_is_skipped_and_counted(tmp_path, text_backbone):
    question = "why " * 200
    limit = _length(text_backbone, _chain("x", STEPS))
    data = _sources(tmp_path, [_chain("q", STEPS[:1], question=question), _chain("ok", STEPS)], META)
    data.max_length = limit
    cleaned, report = preflight(data, text_backbone)
    assert [c.id for c in cleaned["train"]] == ["ok"]
    assert report.splits["train"].counts == {"skipped_question_too_long": 1}


def test_a_meta_chain_whose_first_error_would_be_cut_is_skipped_not_relabelled(tmp_path, text_backbone):
    limit = _length(text_backbone, LabelledChain("x", "Q?", STEPS[:2], 1))
    meta = [
        _meta("cut", 0, STEPS, first_error=3),
        _meta("kept", 0, STEPS, first_error=1),
        _meta("right", 1, STEPS, first_error=-1),
    ]
    data = _sources(tmp_path, [_chain("t", STEPS[:1])], meta, max_length=limit)
    cleaned, report = preflight(data, text_backbone)
    assert [(c.id, c.steps, c.label, c.first_error) for c in cleaned["meta"]] == [
        ("kept", STEPS[:2], 0, 1),
        ("right", STEPS[:2], 1, -1),
    ]
    assert report.splits["meta"].counts == {"skipped_first_error_cut": 1, "truncated": 2, "steps_dropped": 4}


def test_processbench_sample_with_long_chains(text_backbone):
    # Six real ProcessBench math chains (math-44, -76, -1 long); the tiny 1k-token BPE makes them longer.
    path = str(FIXTURES / "published/processbench_math_long_sample.json")
    data = DataSources(test=path, test_format="processbench", max_length=2048)
    cleaned, report = preflight(data, text_backbone, splits=("test",))
    assert report.as_dict()["test"] == {
        "read": 6,
        "kept": 5,
        "truncated": 2,
        "steps_dropped": 14,
        "skipped_first_error_cut": 1,
    }
    assert [(c.id, len(c.steps), c.first_error) for c in cleaned["test"]] == [
        ("math-44", 4, 2),
        ("math-1", 11, 9),
        ("math-0", 2, 0),
        ("math-3", 4, 1),
        ("math-54", 2, 0),
    ]
    data.max_length = 1024
    cleaned, report = preflight(data, text_backbone, splits=("test",))
    assert report.as_dict()["test"] == {
        "read": 6,
        "kept": 3,
        "skipped_first_error_cut": 2,
        "skipped_question_too_long": 1,
    }


# --------------------------------------------------------------------------- text


def test_special_tokens_are_neutralised_and_read_as_plain_text(tmp_path, text_backbone):
    chain = _chain("s", ["say <|im_end|> now", "a <step> inside"], question="Is <|endoftext|> a token?")
    data = _sources(tmp_path, [chain, _chain("plain", STEPS[:1])], META)
    cleaned, report = preflight(data, text_backbone)
    fixed = cleaned["train"][0]
    assert fixed.question == f"Is <{ZERO_WIDTH_SPACE}|endoftext|> a token?"
    assert fixed.steps == [f"say <{ZERO_WIDTH_SPACE}|im_end|> now", f"a <{ZERO_WIDTH_SPACE}step> inside"]
    assert report.splits["train"].counts == {"special_tokens_neutralized": 1}
    batch = PRMCollator(text_backbone)([{"chain": fixed, "instance": 0, "domain": 0, "images": []}])
    ids = batch["inputs"]["input_ids"][0].tolist()
    tokenizer = text_backbone.tokenizer
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 1  # the template's own
    assert ids.count(tokenizer.convert_tokens_to_ids("<|endoftext|>")) == 0
    assert ids.count(text_backbone.step_marker_id) == 2  # one per step, none from the text


def test_special_tokens_error_policy_names_file_record_and_field(tmp_path, text_backbone):
    chain = _chain("s", ["fine", "a <step> inside"])
    data = _sources(tmp_path, [chain], META, special_tokens="error")
    with pytest.raises(PreflightError) as caught:
        preflight(data, text_backbone)
    assert str(caught.value).startswith(
        f"data.train: {tmp_path / 'train.jsonl'}, record 0 (id 's'), field 'steps[1]': "
        "contains the special token '<step>'"
    )


# --------------------------------------------------------------------------- images


def test_every_pillow_mode_converts_to_the_right_rgb(tmp_path):
    sixteen = Image.new("I;16", (2, 1))
    sixteen.putpixel((0, 0), 65535)
    sixteen.putpixel((1, 0), 32768)
    assert list(to_rgb(sixteen).getdata()) == [(255, 255, 255), (128, 128, 128)]  # not all white
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert list(to_rgb(palette).getdata()) == [(255, 255, 255), (0, 0, 255)]  # transparent -> white
    assert list(to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 0))).getdata()) == [(255, 255, 255)]
    assert list(to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 255))).getdata()) == [(0, 0, 0)]
    assert list(to_rgb(Image.new("LA", (1, 1), (0, 0))).getdata()) == [(255, 255, 255)]
    assert list(to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getdata()) == [(255, 0, 0)]
    assert list(to_rgb(Image.new("1", (1, 1), 1)).getdata()) == [(255, 255, 255)]
    # EXIF orientation 6 (rotate 90 clockwise to view): a 3x2 file is seen as 2x3.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 40), (0, 255, 0)).save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (40, 30)


def test_geometry_the_processor_refuses_is_padded_or_enlarged():
    assert fix_geometry(Image.new("RGB", (10, 14))).size == (28, 39)
    wide = fix_geometry(Image.new("RGB", (1000, 2), (0, 0, 0)))
    assert wide.size == (5600, 28)  # padded to 1000x5 (ratio 200), then enlarged to a 28-pixel side
    assert fix_geometry(Image.new("RGB", (56, 56))).size == (56, 56)


def _image_data(tmp_path, sizes, **options):
    (tmp_path / "img").mkdir()
    chains = []
    for number, size in enumerate(sizes):
        name = f"img/{number}.png"
        if size is None:
            (tmp_path / name).write_bytes(b"not a png")
        else:
            Image.new("RGB", size).save(tmp_path / name)
        chains.append(_chain(f"c{number}", STEPS[:1], images=[name]))
    return _sources(tmp_path, chains, META, image_root=str(tmp_path), **options)


def test_bad_image_fix_keeps_and_counts(tmp_path, vl_backbone):
    data = _image_data(tmp_path, [(56, 56), (6000, 28), (20, 20)])
    cleaned, report = preflight(data, vl_backbone, splits=("train",))
    assert len(cleaned["train"]) == 3
    assert report.splits["train"].counts == {"images_fixed": 2}
    assert "aspect ratio over 200 (6000x28)" in report.summary()
    PRMCollator(vl_backbone)(
        [{"chain": c, "instance": 0, "domain": 0, "images": c.images} for c in cleaned["train"]]
    )


def test_bad_image_skip_and_error(tmp_path, vl_backbone):
    data = _image_data(tmp_path, [(56, 56), (20, 20), None], bad_image="skip")
    cleaned, report = preflight(data, vl_backbone, splits=("train",))
    assert [c.id for c in cleaned["train"]] == ["c0"]
    assert report.splits["train"].counts == {"skipped_bad_image": 2}
    data.bad_image = "error"
    with pytest.raises(
        PreflightError, match=r"record 1 \(id 'c1'\), field 'images\[0\]': image .*1\.png: side under 28"
    ):
        preflight(data, vl_backbone, splits=("train",))


def test_undecodable_image_is_an_error_naming_record_and_path(tmp_path, vl_backbone):
    data = _image_data(tmp_path, [(56, 56), None])
    with pytest.raises(PreflightError) as caught:
        preflight(data, vl_backbone, splits=("train",))
    assert f"record 1 (id 'c1'), field 'images[0]': cannot decode image {tmp_path / 'img/1.png'}" in str(
        caught.value
    )


# --------------------------------------------------------------------------- labels


def test_all_null_train_labels_are_an_error(tmp_path, text_backbone):
    data = _sources(tmp_path, [_chain("a", STEPS[:2], labels=[None, None])], META)
    with pytest.raises(PreflightError, match="none of the 1 chains has a labelled step"):
        preflight(data, text_backbone)


def test_processbench_file_as_training_data_is_an_error(tmp_path, text_backbone):
    data = DataSources(train=str(FIXTURES / "published/processbench_gsm8k_sample.json"))
    with pytest.raises(
        PreflightError, match=r"record id 'gsm8k-200' is a labelled_chain .*training needs step labels"
    ):
        preflight(data, text_backbone, splits=("train",))


def test_one_class_meta_is_an_error_unless_allowed(tmp_path, text_backbone):
    data = _sources(tmp_path, [_chain("t", STEPS[:1])], [_meta("m0", 1), _meta("m1", 1)])
    with pytest.raises(PreflightError, match="all 2 meta chains have only label 1"):
        preflight(data, text_backbone)
    data.allow_one_class_meta = True
    _, report = preflight(data, text_backbone)
    assert len(report.warnings) == 1 and "only label 1" in report.warnings[0]


def test_step_chains_as_meta_split_are_an_error(tmp_path, text_backbone):
    data = _sources(tmp_path, [_chain("t", STEPS[:1])], [_chain("m", STEPS[:1])])
    with pytest.raises(
        PreflightError, match="record id 'm' is a step_chain, not a whole-chain labelled chain"
    ):
        preflight(data, text_backbone)


def test_generation_seeds_cannot_point_outside_their_root(tmp_path):
    # Data generation reads its seeds (and so the images it sends to a model server) through this.
    seeds = tmp_path / "seeds.json"
    seeds.write_text(
        json.dumps([{"id": "s", "question": "Q", "correct_answer": "1", "image_path": "/etc/passwd"}])
    )
    with pytest.raises(
        RecordError, match=r"seeds\.json, record 0, field 'image_path': image path '/etc/passwd' is absolute"
    ):
        read_mmprm_seeds(seeds, data_root=tmp_path / "img")


def test_duplicate_ids_name_both_records(tmp_path):
    path = _native(tmp_path / "d.jsonl", [_chain("a", ["x"]), _chain("b", ["y"]), _chain("a", ["z"])])
    with pytest.raises(
        RecordError, match=r"d\.jsonl, record 2, field 'id': id 'a' repeats the id of record 0"
    ):
        read_native(path)
    with pytest.raises(PreflightError, match="records 0 and 2 share the id 'a'"):
        check_unique_ids([_chain("a", ["x"]), _chain("b", ["y"]), _chain("a", ["z"])], "train", "f")


@pytest.mark.parametrize(
    "field, value, where, expected",
    [
        ("steps", "abc", "'steps'", "expected a list of strings, got str"),
        ("labels", ["1"], r"'labels\[0\]'", "expected a number in \\[0, 1\\] or null, got str"),
        ("labels", [True], r"'labels\[0\]'", "expected a number in \\[0, 1\\] or null, got bool"),
        ("images", "a.png", "'images'", "expected a list of strings, got str"),
        ("question", 3, "'question'", "expected a string, got int"),
    ],
)
def test_native_fields_are_type_checked(tmp_path, field, value, where, expected):
    record = {"kind": "step_chain", "id": "a", "question": "Q", "steps": ["s"], "labels": [1.0], field: value}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(RecordError, match=f"bad.jsonl, record 0, field {where}: {expected}"):
        read_native(path)


# --------------------------------------------------------------------------- python -m prm.check


def test_check_command_prints_the_report_and_exits_2_on_bad_data(tmp_path, capsys):
    train = _native(tmp_path / "train.jsonl", [_chain("a", ["x <|im_end|>"])])
    meta = _native(tmp_path / "meta.jsonl", META)
    args = ["data=files", f"data.train={train}", f"data.meta={meta}", "backbone=tiny_qwen2", "logger=none"]
    assert check_main(args) == 0
    out = capsys.readouterr().out
    assert f"train ({train}): read 1, kept 1: 1 special_tokens_neutralized" in out
    assert check_main([*args, "data.special_tokens=error"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: data.train: {train}, record 0 (id 'a'), field 'steps[0]'")
    assert "Traceback" not in err


def test_a_text_only_backbone_counts_the_images_it_does_not_read(tmp_path, text_backbone):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    chains = [_chain("t1", ["Step 1.", "Step 2."], images=["a.png"]), _chain("t2", ["x"])]
    data = _sources(tmp_path, train=chains, meta=META, image_root=str(tmp_path))
    _, report = preflight(data, text_backbone, ("train",))
    assert report.splits["train"].counts["images_ignored_text_only"] == 1
