"""Training and validation volumes: the patient-level carve, split entries, the record next to the run, and the
ctrate recipe, whose training stages never read CT-RATE's valid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctagrg.config import ConfigError, load_config
from ctagrg.data.cache import cache_path, save_cached
from ctagrg.data.ctrate import carve_patients, parse_name
from ctagrg.labels import LABELS
from ctagrg.training.splits import CarveConfig, SplitConfig, read_name_list, resolve, select, write_record

ROOT = Path(__file__).resolve().parents[1]
CARVE = CarveConfig(source="train", fractions={"train": 0.9, "valid": 0.1}, seed=0)


def _names(n_patients: int, split: str = "train") -> list[str]:
    """1-3 volumes per patient (scans a/b, reconstructions 1/2), as CT-RATE has them."""
    rng = np.random.default_rng(0)
    out = []
    for p in range(n_patients):
        scans = [("a", 1), ("a", 2), ("b", 1)][: int(rng.integers(1, 4))]
        out += [f"{split}_{p}_{s}_{r}" for s, r in scans]
    return out


def _patients(names: list[str]) -> set[str]:
    return {parse_name(n)["patient"] for n in names}


def test_carve_is_patient_level_seeded_and_the_same_on_any_subset() -> None:
    names = _names(2000)
    parts = carve_patients(names, {"train": 0.9, "valid": 0.1}, seed=0)
    assert sorted(parts["train"] + parts["valid"]) == sorted(names)
    assert not _patients(parts["train"]) & _patients(parts["valid"])  # every volume of a patient in one part
    share = len(_patients(parts["valid"])) / 2000
    assert 0.08 < share < 0.12  # 10 % up to sampling noise (sd 0.7 %)
    assert carve_patients(names, {"train": 0.9, "valid": 0.1}, seed=0) == parts
    other = carve_patients(names, {"train": 0.9, "valid": 0.1}, seed=1)["valid"]
    assert other != parts["valid"] and len(set(other) & set(parts["valid"])) < len(parts["valid"]) / 2
    # a stage that sees only some of the volumes (one preprocessed half) puts each of them in the same part
    half = names[::2]
    sub = carve_patients(half, {"train": 0.9, "valid": 0.1}, seed=0)
    assert sub["valid"] == [n for n in parts["valid"] if n in set(half)]
    with pytest.raises(ValueError, match="non-negative fractions"):
        carve_patients(names, {"train": -1.0})


def test_split_entries_names_carve_and_files(tmp_path: Path) -> None:
    names = _names(100) + _names(10, "valid") + _names(5, "test")
    carved = carve_patients([n for n in names if n.startswith("train_")], CARVE.fractions, seed=0)
    assert select(["validation"], names, CARVE) == select(["valid"], names, CARVE) == sorted(_names(10, "valid"))
    assert select(["carve:valid"], names, CARVE) == carved["valid"]
    assert select(["carve:train", "test"], names, CARVE) == sorted(carved["train"] + _names(5, "test"))
    listed = tmp_path / "mine.txt"
    listed.write_text("# hand-picked\ntrain_3_a_1.nii.gz\n\ntrain_4_a_1  # a comment\nnot_cached_9_a_1\n")
    assert read_name_list(listed) == ["train_3_a_1", "train_4_a_1", "not_cached_9_a_1"]
    assert select([str(listed)], names, CARVE) == ["train_3_a_1", "train_4_a_1"]  # names the stage has data for
    table = tmp_path / "mine.csv"
    table.write_text("VolumeName,Lung nodule\nvalid_1_a_1.nii.gz,1\n")
    assert select([str(table)], names, CARVE) == ["valid_1_a_1"]
    with pytest.raises(ConfigError, match="'carve:test' names no part of split.carve.fractions"):
        select(["carve:test"], names, CARVE)
    with pytest.raises(ConfigError, match="missing.txt: name list not found"):
        select([str(tmp_path / "missing.txt")], names, CARVE)


def test_resolve_refuses_overlap_and_empty_sets(tmp_path: Path) -> None:
    names = _names(100)
    ok = resolve(SplitConfig(train=("carve:train",), valid=("carve:valid",), carve=CARVE), names, names, "here")
    assert ok.train and ok.valid and not _patients(ok.train) & _patients(ok.valid)
    with pytest.raises(ConfigError, match=r"volume\(s\) are in both train and valid"):
        resolve(SplitConfig(train=("train",), valid=("carve:valid",), carve=CARVE), names, names, "here")
    # two volumes of one patient, one on each side
    first, second = [n for n in names if parse_name(n)["patient"] == "train_1"][:2]
    (tmp_path / "a.txt").write_text(f"{first}\n")
    (tmp_path / "b.txt").write_text(f"{second}\n")
    with pytest.raises(ConfigError, match=r"1 patient\(s\) have volumes in both train and valid, e.g. train_1"):
        resolve(SplitConfig(train=(str(tmp_path / "a.txt"),), valid=(str(tmp_path / "b.txt"),)), names, names, "here")
    with pytest.raises(ConfigError, match=r"split.train \['test'\]: selects none of the \d+ volumes of here"):
        resolve(SplitConfig(train=("test",)), names, [], "here")


def test_record_lists_the_names_and_is_a_name_list(tmp_path: Path) -> None:
    names = _names(60)
    cfg = SplitConfig(train=("carve:train",), valid=("carve:valid",), carve=CARVE)
    selection = resolve(cfg, names, names, "here")
    folder = write_record(tmp_path / "run", selection, cfg, {"cache": "c"})
    assert (folder / "valid.txt").read_text().split() == selection.valid
    record = json.loads((folder / "splits.json").read_text())
    assert record["valid"]["volumes"] == len(selection.valid)
    assert record["valid"]["patients"] == len(_patients(selection.valid))
    assert record["carve"] == {"source": "train", "fractions": {"train": 0.9, "valid": 0.1}, "seed": 0}
    # another stage reads the written lists as they are
    again = resolve(SplitConfig(train=(str(folder / "train.txt"),), valid=(str(folder / "valid.txt"),)), names,
                    names, "here")
    assert again == selection


# -- the ctrate recipe: every stage trains and selects on carved train patients, never on CT-RATE's valid ---------
TINY = ["model.ctnet.input_shape=[6,16,16]", "model.ctnet.trunk.width=4", "model.ctnet.trunk.layers=[1,1,1,1]",
        "model.ctnet.reducer_kernels=[[1,1,1],[1,1,1],[2,1,1]]",
        "model.ctnet.reducer_strides=[[2,1,1],[2,1,1],[1,1,1]]", "model.ctnet.embed_dim=32",
        "model.heads.in_dim=32", "model.heads.embed_dim=8", "model.heads.classifier_hidden=4"]
RUN = ["train.epochs=1", "train.batch_size=4", "train.precision=fp32", "train.num_workers=0",
       "train.tensorboard=false", "train.save_every_steps=0", "data.augment.enabled=false"]


def _release(root: Path) -> Path:
    """A cache of tiny volumes of 40 train patients (1-3 volumes each) and 6 valid ones, with the release's label
    CSVs (multi_abnormality_labels/{train,valid}_predicted_labels.csv)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("valid", 6)):
        rows = []
        for name in _names(n, split):
            y = rng.integers(0, 2, len(LABELS))
            y[0] = len(rows) % 2  # both classes of label 0 in any part
            save_cached(cache_path(root / "cache", name), rng.normal(0, 0.05, (6, 16, 16)).astype(np.float32),
                        -0.449, 0.551)
            rows.append(f"{name}.nii.gz," + ",".join(map(str, y)))
        csv = root / "multi_abnormality_labels" / f"{split}_predicted_labels.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        csv.write_text("VolumeName," + ",".join(LABELS) + "\n" + "\n".join(rows) + "\n")
    return root


def _ctrate_config(stage: str, root: Path, extra: list[str]) -> object:
    from ctagrg.training.task import get_task

    labels = root / "multi_abnormality_labels" / "train_predicted_labels.csv"
    return load_config(get_task(stage).Config, ROOT / "configs" / "ctrate" / f"{stage}.yaml", [
        f"data.cache_dir={root / 'cache'}", f"data.train_labels={labels}", f"data.valid_labels={labels}",
        f"train.out_dir={root / stage}", *RUN, *TINY, *extra])


@pytest.mark.slow
def test_ctrate_stages_train_and_select_on_carved_train_patients(tmp_path: Path, monkeypatch) -> None:
    import ctagrg.data.dataset as dataset_module
    from ctagrg.training.loop import train
    from ctagrg.training.task import get_task

    root = _release(tmp_path)
    read: list[str] = []

    def spy(real):  # every volume a stage reads passes here
        def wrapped(path, *args, **kwargs):
            read.append(Path(path).name)
            return real(path, *args, **kwargs)
        return wrapped

    for reader in ("load_cached_raw", "load_cached"):
        monkeypatch.setattr(dataset_module, reader, spy(getattr(dataset_module, reader)))
    train_names = _names(40)
    carved = carve_patients(train_names, {"train": 0.95, "valid": 0.05}, seed=0)
    assert carved["valid"], "the fixture's 40 patients must leave some for validation"

    pre_cfg = _ctrate_config("pretrain", root, ["init.resnet18=none", "model.heads.pretrain_hidden=[8,4]"])
    best = train(get_task("pretrain")(pre_cfg))
    cls_cfg = _ctrate_config("classifier", root, [f"init.encoder_from={best}"])
    cls_best = train(get_task("classifier")(cls_cfg))

    assert read and not [n for n in read if n.startswith("valid_")]  # CT-RATE's valid: never read by training
    for stage in ("pretrain", "classifier"):
        record = tmp_path / stage / "splits"
        assert (record / "train.txt").read_text().split() == carved["train"]
        assert (record / "valid.txt").read_text().split() == carved["valid"]
        assert not _patients(carved["train"]) & _patients(carved["valid"])
    thresholds = json.loads((cls_best / "thresholds.json").read_text())
    assert thresholds["n_validation"] == len(carved["valid"])  # the thresholds are chosen on the carved patients
    assert json.loads((cls_best / "validation.json").read_text())["n"] == len(carved["valid"])


def test_ctrate_decoder_selects_the_same_carved_patients(tmp_path: Path) -> None:
    """Step 2 chooses among the embedding cache's volumes; the carve puts the same patients in valid as the visual
    stages do, whichever volumes the cache holds (and a cache with CT-RATE's valid in it still trains on none)."""
    import torch

    from ctagrg.training.decoder_task import DecoderTask, DecoderTaskConfig
    from ctagrg.training.embedding_cache import build_embedding_cache

    names = _names(40)[::2] + _names(6, "valid")  # a cache of some of train's volumes (and, wrongly, valid's)
    items = [{"volume": torch.full((1, 1, 1, 1), float(k)), "name": n,
              "labels": torch.tensor([1.0] + [0.0] * (len(LABELS) - 1))} for k, n in enumerate(names)]
    table = torch.randn(len(names), 18, 4)
    step1 = lambda x: {"logits": torch.zeros(x.shape[0], 18), "embeddings": table[x.flatten().long()]}  # noqa: E731
    build_embedding_cache(step1, items, {n: {LABELS[0]: "A nodule."} for n in names}, tmp_path / "emb")
    cfg = load_config(DecoderTaskConfig, ROOT / "configs" / "ctrate" / "decoder.yaml", [
        f"embeddings.out_dir={tmp_path / 'emb'}", "embeddings.step1_dir=", f"train.out_dir={tmp_path / 'dec'}"])
    task = DecoderTask(cfg)
    selection = task.selection()
    carved = carve_patients(_names(40), {"train": 0.95, "valid": 0.05}, seed=0)
    assert selection.valid == [n for n in carved["valid"] if n in set(names)]
    assert selection.train == [n for n in carved["train"] if n in set(names)]
    task.on_train_start(None)
    assert (tmp_path / "dec" / "splits" / "valid.txt").read_text().split() == selection.valid
