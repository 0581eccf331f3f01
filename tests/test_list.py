"""Discoverability: ``--list`` (names, zoo names, the official top-1) and the README's preprocessing example.

Every name ``--list`` shows is a valid ``--flavor``; its top1 column is the figure published in
tensorflow/tpu's README (excerpt below, parsed here independently of converter/families/efficientnet/checkpoints.py), the zoo
page's own figure (shared/reference/model-zoo.csv) shown beside it, labelled, where it differs
beyond rounding. The README's ``preprocess_batch`` block is executed as written.
"""
import csv
import re

import numpy as np
import pytest
import torch

from converter.cli import main
from converter.registry import all_checkpoints, find_checkpoint

# tensorflow/tpu models/official/efficientnet/README.md at 7dc921f (2026-03-03), the checkpoint
# table's rows (only the cells with a checkpoint link), verbatim
OFFICIAL_README_ROWS = """
| Baseline preprocessing |  76.7% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b0.tar.gz))   | 78.7% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b1.tar.gz))  | 79.8% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b2.tar.gz)) | 81.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b3.tar.gz)) | 82.5% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b4.tar.gz)) | 83.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b5.tar.gz)) |
| AutoAugment (AA) |  77.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b0.tar.gz))   | 79.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b1.tar.gz))  | 80.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b2.tar.gz)) | 81.6% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b3.tar.gz)) | 82.9% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b4.tar.gz)) | 83.6% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b5.tar.gz)) |  84.0% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b6.tar.gz)) | 84.3% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckptsaug/efficientnet-b7.tar.gz))  || | |
| RandAugment (RA) |  |  |  |  |  | 83.7%  ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/randaug/efficientnet-b5-randaug.tar.gz)) |  | 84.7%  ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/randaug/efficientnet-b7-randaug.tar.gz)) |  | | |
| AdvProp + AA | 77.6% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b0.tar.gz)) | 79.6% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b1.tar.gz))  | 80.5% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b2.tar.gz)) | 81.9% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b3.tar.gz)) | 83.3% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b4.tar.gz)) | 84.3% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b5.tar.gz)) | 84.8% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b6.tar.gz)) | 85.2% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b7.tar.gz)) | 85.5% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/advprop/efficientnet-b8.tar.gz))|| | |
| NoisyStudent + RA | 78.8% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b0.tar.gz)) | 81.5% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b1.tar.gz)) | 82.4% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b2.tar.gz)) | 84.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b3.tar.gz)) | 85.3% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b4.tar.gz)) | 86.1% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b5.tar.gz)) | 86.4% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b6.tar.gz)) | 86.9% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-b7.tar.gz)) | - |88.2%([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-l2_475.tar.gz))|88.4% ([ckpt](https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/noisystudent/noisy_student_efficientnet-l2.tar.gz)) |
"""


def _official_by_url():
    """{checkpoint URL: the published top-1 as written}, parsed from the README excerpt."""
    pairs = re.findall(r"(\d+\.\d+)%\s*\(\[ckpt\]\((https://[^)]+)\)\)", OFFICIAL_README_ROWS)
    return {url: top1 for top1, url in pairs}


def _list_table(capsys):
    """(header, [row dicts], notes) of ``convert-effnet --list``, cut at the header's column starts."""
    capsys.readouterr()
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    names = re.split(r"\s{2,}", header.strip())  # columns are two or more spaces apart
    starts, pos = [], 0
    for n in names:
        pos = header.index(n, pos)
        starts.append(pos)
        pos += len(n)
    table, notes = [], []
    for line in lines[1:]:
        if not line.startswith(("efficientnet", "mnasnet", "mixnet")) and "https://" not in line:
            notes.append(line)
            continue
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        table.append(dict(zip(names, cells)))
    return names, table, notes


def test_list_shows_names_zoo_names_and_the_published_top1(capsys, reference_dir):
    names, table, notes = _list_table(capsys)
    assert names == ["name", "zoo name", "params(M)", "GFLOPs", "res", "top1", "top1(zoo)", "url"]
    rows = {r["name"]: r for r in table}
    assert len(rows) == len(table) == len(all_checkpoints())  # every registered checkpoint, once
    with open(reference_dir / "model-zoo.csv") as f:
        zoo = list(csv.DictReader(f))
    assert len(zoo) == 33
    official = _official_by_url()
    assert len(official) == 35  # 33 zoo checkpoints + the two RandAugment ones
    for z in zoo:
        c = find_checkpoint(z["variant"], z["flavor"])
        r = rows[c.name]
        assert r["zoo name"] == z["model"], r  # the zoo's model name, in its column
        assert r["top1"] == official[r["url"]], r  # the published figure, as written
        published, theirs = float(official[r["url"]]), float(z["top1"])
        if abs(published - theirs) > 0.05 + 1e-9:  # beyond the rounding of a one-decimal figure
            assert r["top1(zoo)"] == z["top1"], r
        else:
            assert r["top1(zoo)"] == "", r
    ns_b0 = rows["efficientnet-b0_noisystudent"]
    assert (ns_b0["top1"], ns_b0["top1(zoo)"]) == ("78.8", "77.63")  # issue 14's example
    assert rows["efficientnet-b4_advprop"]["top1(zoo)"] == ""  # 83.25 rounds to 83.3: the same figure
    for v, top1 in (("b5", "83.7"), ("b7", "84.7")):  # RandAugment: no zoo entry
        r = rows[f"efficientnet-{v}_randaug"]
        assert (r["zoo name"], r["top1"], r["top1(zoo)"]) == ("-", top1, "")
    with open(reference_dir / "family.csv") as f:  # Lite/EdgeTPU/CondConv: their READMEs' figures
        for fam in csv.DictReader(f):
            r = next(x for x in table if x["url"] == fam["url"])
            assert float(r["top1"]) == float(fam["top1"]) and r["top1(zoo)"] == "", r
    text = "\n".join(notes)
    assert "top1(zoo)" in text and "published" in text and "--flavor" in text


def test_every_listed_name_is_a_valid_flavor(capsys):
    _, table, _ = _list_table(capsys)
    for r in table:
        c = find_checkpoint(None, r["name"])
        assert c.name == r["name"] and c.url == r["url"]
        assert find_checkpoint(None, r["name"].upper()) == c  # any case
        if r["zoo name"] != "-":
            assert find_checkpoint(None, r["zoo name"]) == c
            assert find_checkpoint(c.variant, r["zoo name"]) == c  # with a matching --variant too
    from converter.errors import ConversionError

    with pytest.raises(ConversionError, match="is a b0 checkpoint but --variant is b1"):
        find_checkpoint("b1", "efficientnet-b0_aa")


def test_cli_converts_by_a_listed_name(tmp_path, capsys):
    """--flavor NAME as --list prints it, no --variant: the checkpoint it names."""
    from helpers import make_checkpoint

    prefix = make_checkpoint(tmp_path, "b0")
    for flavor in ("efficientnet-b0_aa", "efficientnet-b0_3rdparty_8xb32-aa-advprop_in1k"):
        out = tmp_path / flavor
        assert main(["--flavor", flavor, "--checkpoint", str(prefix), "--output-dir", str(out), "--quiet"]) == 0
        want = find_checkpoint(None, flavor)
        from converter.loading import read_weights

        _, meta = read_weights(out / f"{want.name}.safetensors")
        assert (meta["variant"], meta["flavor"]) == ("b0", want.flavor)
        assert meta["mean"] == list(want.mean)  # AdvProp's preprocessing for the AdvProp zoo name
    capsys.readouterr()
    rc = main(["--variant", "b1", "--flavor", "efficientnet-b0_aa", "--checkpoint", str(prefix),
               "--output-dir", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is a b0 checkpoint but --variant is b1" in err and len(err.splitlines()) == 1


# ---- the README's preprocess_batch example, run as written -------------------------------------

def _readme_block(needle):
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    hits = [b for b in blocks if needle in b]
    assert len(hits) == 1, f"{len(hits)} README python blocks contain {needle!r}"
    return hits[0]


def test_readme_preprocess_example_runs_as_written(tmp_path, monkeypatch):
    from PIL import Image

    from converter.loading import load_model
    from converter.preprocess import preprocess_batch
    from helpers import make_checkpoint

    code = _readme_block('mode="official")')  # the usage example (the fine-tuning one evaluates too)
    weights = re.search(r'load_model\("([^"]+)"\)', code).group(1)
    images = re.search(r"preprocess_batch\(\[([^\]]+)\]", code).group(1)
    m = re.fullmatch(r"efficientnet-(\w+)_(\w+)\.safetensors", weights)
    assert m, weights
    # the files the example names: a converted (generated) checkpoint and photos
    prefix = make_checkpoint(tmp_path, m.group(1))
    assert main(["--variant", m.group(1), "--flavor", m.group(2), "--checkpoint", str(prefix),
                 "--output-dir", str(tmp_path / "run"), "--quiet"]) == 0
    rng = np.random.default_rng(0)
    files = re.findall(r'"([^"]+)"', images)
    for i, name in enumerate(files):
        Image.fromarray(rng.integers(0, 256, (180 + 7 * i, 250, 3), dtype=np.uint8)).save(tmp_path / "run" / name)
    monkeypatch.chdir(tmp_path / "run")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102  (the documented example, verbatim)
    model, x, logits = scope["model"], scope["x"], scope["logits"]
    assert isinstance(logits, torch.Tensor) and logits.shape == (len(files), model.spec.num_classes)
    assert torch.isfinite(logits).all()
    # the example computes what the explicit form computes
    want_x = preprocess_batch(files, load_model(weights).pretrained_cfg, mode="official")
    np.testing.assert_array_equal(np.asarray(x), want_x)
    with torch.no_grad():
        want = load_model(weights)(torch.from_numpy(want_x))
    torch.testing.assert_close(logits.detach(), want, rtol=0, atol=0)


def test_model_takes_an_array_on_its_device_and_dtype():
    from converter.model import build_model

    torch.manual_seed(0)
    model = build_model("b0").eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        a, b = model(x), model(torch.from_numpy(x))
        assert torch.equal(a, b)
        c = model.double()(x)  # float32 array into a float64 model: converted to its dtype
    assert c.dtype == torch.float64 and torch.allclose(c.float(), a, rtol=1e-4, atol=1e-5)
