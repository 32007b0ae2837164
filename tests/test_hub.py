"""Models on the Hugging Face Hub (ctagrg.generation.hub): Hub ids in Reporter.from_pretrained and ctagrg
report/serve/evaluate --model, offline against a cache laid out as huggingface_hub lays it out; ctagrg push with a
stand-in HfApi; the model card's Hub metadata. No test reaches the network: sockets refuse to connect."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ctagrg.cli.main import main
from ctagrg.generation.hub import HubId, hub_id_of_cache_path, parse_hub_id, resolve_model_dir
from ctagrg.generation.model_card import split_front_matter
from ctagrg.generation.reporter import Reporter, model_fingerprint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMIT_A = "a" * 40
COMMIT_B = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in tmp_path, HF_HUB_OFFLINE=1, and no socket may connect anywhere."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("test_hub: no network in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path / "hf" / "hub"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny packaged model with a tokenizer trained here (no ../shared needed)."""
    from test_reporter import SHAPE, tiny_visual

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.demo import train_tokenizer
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import ReporterConfig
    from ctagrg.models.conditioning import ConditioningConfig
    from ctagrg.models.decoder import DecoderConfig, ReportDecoder, load_tokenizer

    root = tmp_path_factory.mktemp("hubmodel")
    words = "small nodule in the right upper lobe mild emphysema pleural effusion is seen no consolidation"
    vocab = train_tokenizer([words] * 20, root / "tokenizer", vocab_size=300)
    torch.manual_seed(0)
    cond = ConditioningConfig(input_dim=16, hidden_dims=(32,), output_dim=24)
    decoder = ReportDecoder(DecoderConfig(n_layer=1, n_embd=32, n_head=4, n_positions=64, vocab_size=vocab,
                                          bos_token_id=0, eos_token_id=0, pad_token_id=0, conditioning=cond)).eval()
    reporter = Reporter(tiny_visual(), decoder, load_tokenizer(root / "tokenizer"), [0.0] * 9 + [1.01] * 9,
                        PreprocessConfig(spacing=(8.0, 4.0, 4.0), shape=SHAPE),
                        ReporterConfig(generation=GenerationSettings(max_new_tokens=4)),
                        card={"training_data": "unit-test volumes", "datasets": ["ibrahimhamamci/CT-RATE"]})
    return reporter.save_pretrained(root / "model")


def put_in_cache(cache: Path, repo_id: str, model: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay ``model`` out as huggingface_hub's cache holds a downloaded snapshot: blobs/<sha256>, and
    snapshots/<commit>/<path> as relative symlinks to them; refs/<name> holds the commit. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def with_thresholds(model: Path, out: Path, value: float) -> Path:
    """A copy of ``model`` whose 18 thresholds are all ``value``: another model, told apart by its thresholds."""
    shutil.copytree(model, out)
    data = json.loads((out / "thresholds.json").read_text())
    data["thresholds"] = {k: value for k in data["thresholds"]}
    (out / "thresholds.json").write_text(json.dumps(data))
    return out


def test_parse_hub_id() -> None:
    assert parse_hub_id("org/name") == HubId("org/name", None)
    assert parse_hub_id("my-org/ct.agrg_v2@v1.0") == HubId("my-org/ct.agrg_v2", "v1.0")
    assert parse_hub_id("org/name@refs/pr/3") == HubId("org/name", "refs/pr/3")
    assert str(parse_hub_id("org/name@" + COMMIT_A)) == "org/name@" + COMMIT_A
    for local in ("model", "./org/name", "/abs/model", "a/b/c", "~/model", "../model", "org/", "org/name@", ""):
        assert parse_hub_id(local) is None, local
    assert hub_id_of_cache_path("/x/hub/models--healx--gpt-2-pubmed-medium/snapshots/" + COMMIT_A) == \
        "healx/gpt-2-pubmed-medium"
    assert hub_id_of_cache_path("/models/gpt2") is None


def test_from_pretrained_hub_id_from_the_offline_cache(model_dir: Path, offline_hub: Path) -> None:
    snapshot = put_in_cache(offline_hub, "ctagrg-test/tiny", model_dir, COMMIT_A)
    assert resolve_model_dir("ctagrg-test/tiny") == snapshot
    assert model_fingerprint(snapshot) == model_fingerprint(model_dir)
    hub, local = Reporter.from_pretrained("ctagrg-test/tiny"), Reporter.from_pretrained(model_dir)
    volume = np.random.default_rng(0).normal(size=tuple(local.preprocess.shape)).astype(np.float32)
    a, b = hub.report(volume).to_dict(), local.report(volume).to_dict()
    assert a == b and a["report"]
    assert [x["detected"] for x in a["abnormalities"].values()] == [True] * 9 + [False] * 9


def test_revisions_branch_tag_and_commit(model_dir: Path, offline_hub: Path, tmp_path: Path) -> None:
    put_in_cache(offline_hub, "org/m", with_thresholds(model_dir, tmp_path / "old", 0.25), COMMIT_A, refs=("v1",))
    put_in_cache(offline_hub, "org/m", with_thresholds(model_dir, tmp_path / "new", 0.75), COMMIT_B)
    assert Reporter.from_pretrained("org/m").thresholds == [0.75] * 18  # refs/main
    assert Reporter.from_pretrained("org/m@v1").thresholds == [0.25] * 18  # a tag
    assert Reporter.from_pretrained(f"org/m@{COMMIT_A}").thresholds == [0.25] * 18  # a commit
    with pytest.raises(FileNotFoundError, match="org/m@v2: no such model folder, and not in the local Hugging Face"):
        resolve_model_dir("org/m@v2")


def test_a_local_folder_wins_over_a_hub_id(model_dir: Path, offline_hub: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    put_in_cache(offline_hub, "org/m", with_thresholds(model_dir, tmp_path / "hub", 0.75), COMMIT_A)
    work = tmp_path / "work"
    with_thresholds(model_dir, work / "org" / "m", 0.5)
    monkeypatch.chdir(work)
    assert resolve_model_dir("org/m") == Path("org/m")
    assert Reporter.from_pretrained("org/m").thresholds == [0.5] * 18
    monkeypatch.chdir(tmp_path)
    assert Reporter.from_pretrained("org/m").thresholds == [0.75] * 18


def test_offline_and_not_cached_is_a_clear_error(offline_hub: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        Reporter.from_pretrained("org/absent")
    message = str(err.value)
    assert message.startswith("org/absent: no such model folder, and not in the local Hugging Face cache")
    assert str(offline_hub) in message and "HF_HUB_OFFLINE" in message
    # a path that cannot be a Hub id keeps the local-folder error
    with pytest.raises(FileNotFoundError, match=r"runs/a/model: no such model folder \(a folder written by"):
        Reporter.from_pretrained("runs/a/model")


def test_online_without_network_and_not_cached_is_a_clear_error(offline_hub: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens; sockets refuse anyway
    with pytest.raises(FileNotFoundError, match="org/absent: no such model folder, and not in the local Hugging "
                                                "Face cache .* the Hugging Face Hub could not be reached"):
        resolve_model_dir("org/absent")


def test_a_hub_repository_that_is_not_a_packaged_model(model_dir: Path, offline_hub: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial, ignore=shutil.ignore_patterns("decoder"))
    put_in_cache(offline_hub, "org/partial", partial, COMMIT_A)
    with pytest.raises(FileNotFoundError, match=r"org/partial \(.*\): not a packaged ctagrg model \(missing decoder\)"):
        Reporter.from_pretrained("org/partial")


def test_report_and_evaluate_cli_take_a_hub_id(model_dir: Path, offline_hub: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from test_report_cli import read_lines, write_scan

    put_in_cache(offline_hub, "org/m", model_dir, COMMIT_A)
    scan = write_scan(tmp_path / "a.nii.gz", 0)
    for model, out in (("org/m", "hub.jsonl"), (str(model_dir), "local.jsonl")):
        assert main(["report", str(scan), "--model", model, "--out", str(tmp_path / out), "--device", "cpu",
                     "--quiet"]) == 0
    hub, local = read_lines(tmp_path / "hub.jsonl")[0], read_lines(tmp_path / "local.jsonl")[0]
    assert hub["model"] == local["model"] == model_fingerprint(model_dir)
    assert hub["report"] == local["report"] and hub["abnormalities"] == local["abnormalities"]
    capsys.readouterr()
    assert main(["report", str(scan), "--model", "org/absent", "--device", "cpu"]) == 2
    assert "org/absent: no such model folder, and not in the local Hugging Face cache" in capsys.readouterr().err
    assert main(["evaluate", "--model", "org/absent", "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "org/absent: no such model folder, and not in the local Hugging Face cache" in capsys.readouterr().err


def test_evaluate_cli_passes_the_snapshot_on(model_dir: Path, offline_hub: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import ctagrg.evaluation.evaluate as ev

    snapshot = put_in_cache(offline_hub, "org/m", model_dir, COMMIT_A)
    seen: list[Path] = []

    def fake_evaluate(model: Path, data: Any, out: Any, cfg: Any) -> dict:
        seen.append(Path(model))
        raise ValueError("stop here")

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    assert main(["evaluate", "--model", "org/m", "--data", str(tmp_path), "--out", str(tmp_path / "e"),
                 "--device", "cpu"]) == 1
    assert seen == [snapshot]


def test_serve_cli_loads_a_hub_id(model_dir: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    import ctagrg.serve.http as http

    put_in_cache(offline_hub, "org/m", with_thresholds(model_dir, offline_hub.parent / "m", 0.3), COMMIT_A)
    loaded: list[Reporter] = []

    def no_server(reporter: Reporter, **kwargs: Any) -> None:
        loaded.append(reporter)
        raise OSError("not listening in a test")

    monkeypatch.setattr(http, "make_server", no_server)
    assert main(["serve", "--model", "org/m", "--device", "cpu", "--port", "0"]) == 2
    assert len(loaded) == 1 and loaded[0].thresholds == [0.3] * 18
    assert main(["serve", "--model", "org/absent", "--device", "cpu"]) == 2
    assert "org/absent: no such model folder, and not in the local Hugging Face cache" in capsys.readouterr().err


class FakeHfApi:
    """Records what ``ctagrg push`` asks of huggingface_hub.HfApi, and what upload_folder would send."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs: Any) -> Any:
        from huggingface_hub.utils import filter_repo_objects

        root = Path(kwargs["folder_path"])
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        sent = sorted(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                          ignore_patterns=kwargs.get("ignore_patterns")))
        self.calls.append(("upload_folder", {**kwargs, "sent": sent}))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/{'c' * 40}"})


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[FakeHfApi]:
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_uploads_the_packaged_model(model_dir: Path, tmp_path: Path, fake_api: type[FakeHfApi],
                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    (folder / "reports.jsonl").write_text("{}\n")  # a file beside the model: not uploaded
    assert main(["push", "--model", str(folder), "--repo", "org/tiny@dev", "--private", "--message", "first"]) == 0
    (name, create), (_, branch), (_, upload) = fake_api.calls
    assert name == "create_repo" and create["repo_id"] == "org/tiny" and create["private"] is True
    assert branch["repo_id"] == "org/tiny" and branch["branch"] == "dev"
    assert upload["repo_id"] == "org/tiny" and upload["revision"] == "dev" and upload["commit_message"] == "first"
    assert Path(upload["folder_path"]) == folder
    expected = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
    assert upload["sent"] == expected and "README.md" in expected
    assert f"pushed {folder} to org/tiny@dev: https://huggingface.co/org/tiny/commit/" in capsys.readouterr().out


def test_push_refuses_what_is_not_a_packaged_model(model_dir: Path, tmp_path: Path, fake_api: type[FakeHfApi],
                                                   capsys: pytest.CaptureFixture) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial, ignore=shutil.ignore_patterns("tokenizer"))
    assert main(["push", "--model", str(partial), "--repo", "org/tiny"]) == 2
    assert f"{partial}: not a packaged ctagrg model (missing tokenizer)" in capsys.readouterr().err
    assert main(["push", "--model", str(model_dir), "--repo", "not a repo"]) == 2
    assert "--repo not a repo: expected a Hub id org/name" in capsys.readouterr().err
    assert fake_api.calls == []


def write_evaluation(folder: Path, model: Path, protocol: str = "ctagrg", fingerprint: str | None = None) -> Path:
    """A metrics.json and predictions.jsonl as ``ctagrg evaluate`` writes them (the fields the card reads)."""
    folder.mkdir(parents=True)
    headline = {"classification.macro_auroc": 0.81, "clinical.macro_f1": 0.42, "nlg.bleu_4": 0.125,
                "nlg.meteor": None}
    meta = {"model": str(model), "data": "/data/CT-RATE/dataset", "split": "valid", "protocol": protocol,
            "evaluated": 3, "config": {"labeler": "radbert:/models/radbert"}}
    (folder / "metrics.json").write_text(json.dumps({"headline": headline, "meta": meta}))
    line = {"name": "a", "report": "x", "model": fingerprint or model_fingerprint(model)}
    (folder / "predictions.jsonl").write_text(json.dumps(line) + "\n")
    return folder


def test_model_card_starts_with_hub_metadata(model_dir: Path) -> None:
    meta, body = split_front_matter((model_dir / "README.md").read_text())
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "image-to-text"
    assert meta["library_name"] == "ctagrg" and {"medical", "radiology", "chest-ct"} <= set(meta["tags"])
    assert meta["datasets"] == ["ibrahimhamamci/CT-RATE"]
    assert "base_model" not in meta and "model-index" not in meta  # GPT-2 from scratch; nothing evaluated yet
    assert body.startswith("# CT-AGRG report generator") and "## Evaluation\n_No evaluation recorded" in body


def test_push_with_evaluations_puts_the_protocol_in_the_card(model_dir: Path, tmp_path: Path,
                                                             fake_api: type[FakeHfApi]) -> None:
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    before = model_fingerprint(folder)
    ours = write_evaluation(tmp_path / "eval_ctagrg", folder)
    vlm = write_evaluation(tmp_path / "eval_vlm3d", folder, protocol="vlm3d")
    assert main(["push", "--model", str(folder), "--repo", "org/tiny", "--evaluation", str(ours), str(vlm)]) == 0
    text = (folder / "README.md").read_text()
    meta, body = split_front_matter(text)
    assert model_fingerprint(folder) == before  # the card is not part of the model
    assert meta["datasets"] == ["ibrahimhamamci/CT-RATE"] and meta["license"] == "apache-2.0"
    assert meta["metrics"] == ["bleu", "f1", "roc_auc"]
    (index,) = meta["model-index"]
    assert index["name"] == "org/tiny" and len(index["results"]) == 2
    first = index["results"][0]
    assert first["task"]["type"] == "image-to-text"
    assert first["dataset"] == {"type": "CT-RATE/dataset", "name": "CT-RATE/dataset", "split": "valid"}
    assert first["metrics"][1] == {"type": "f1", "value": 0.42,
                                   "name": "clinical.macro_f1 (protocol ctagrg, labeler radbert:/models/radbert)"}
    assert len(first["metrics"]) == 3  # METEOR was not computed: left out
    assert "protocol vlm3d" in index["results"][1]["metrics"][0]["name"]
    assert body.count("## Evaluation") == 1 and "Protocol `vlm3d`" in body and "| clinical.macro_f1 | 0.42 |" in body
    assert body.index("## Evaluation") < body.index("## Decision thresholds")
    # pushing again with one evaluation replaces the results; the rest of the card is untouched
    assert main(["push", "--model", str(folder), "--repo", "org/tiny", "--evaluation", str(ours)]) == 0
    meta_again, again = split_front_matter((folder / "README.md").read_text())
    assert len(meta_again["model-index"][0]["results"]) == 1 and meta_again["metrics"] == meta["metrics"]
    assert "Protocol `vlm3d`" not in again and again.split("## Evaluation")[0] == body.split("## Evaluation")[0]
    assert again.split("## Decision thresholds")[1] == body.split("## Decision thresholds")[1]


def test_push_refuses_another_models_evaluation(model_dir: Path, tmp_path: Path, fake_api: type[FakeHfApi],
                                                capsys: pytest.CaptureFixture) -> None:
    other = write_evaluation(tmp_path / "eval", model_dir, fingerprint="f" * 16)
    card = (model_dir / "README.md").read_text()
    assert main(["push", "--model", str(model_dir), "--repo", "org/tiny", "--evaluation", str(other)]) == 2
    assert f"{other}: evaluates another model (fingerprint ffffffffffffffff" in capsys.readouterr().err
    assert (model_dir / "README.md").read_text() == card and fake_api.calls == []


def test_base_model_from_a_hub_cache_gpt2(model_dir: Path) -> None:
    reporter = Reporter.from_pretrained(model_dir)
    reporter.decoder.config.gpt2_path = "/home/u/.cache/huggingface/hub/models--healx--gpt-2-pubmed-medium/" \
                                        f"snapshots/{COMMIT_A}"
    assert reporter._hub_metadata()["base_model"] == "healx/gpt-2-pubmed-medium"
    reporter.card["base_model"] = "gpt2"
    assert reporter._hub_metadata()["base_model"] == "gpt2"


def test_package_cli_writes_the_hub_metadata(model_dir: Path, tmp_path: Path) -> None:
    reporter = Reporter.from_pretrained(model_dir)
    reporter.visual.save_pretrained(tmp_path / "step1" / "best")
    (tmp_path / "step1" / "best" / "thresholds.json").write_text(json.dumps(reporter.thresholds))
    reporter.decoder.save_pretrained(tmp_path / "dec" / "best")
    reporter.tokenizer.save_pretrained(str(tmp_path / "dec" / "best" / "tokenizer"))
    argv = ["package", "--classifier", str(tmp_path / "step1" / "best"), "--decoder", str(tmp_path / "dec" / "best"),
            "--preprocess", str(model_dir / "preprocess.json"), "--out", str(tmp_path / "packaged"),
            "--license", "cc-by-nc-sa-4.0", "--dataset", "ibrahimhamamci/CT-RATE", "--dataset", "org/more-cts",
            "--base-model", "healx/gpt-2-pubmed-medium"]
    assert main(argv) == 0
    meta, _ = split_front_matter((tmp_path / "packaged" / "README.md").read_text())
    assert meta["license"] == "cc-by-nc-sa-4.0" and meta["base_model"] == "healx/gpt-2-pubmed-medium"
    assert meta["datasets"] == ["ibrahimhamamci/CT-RATE", "org/more-cts"]
    assert Reporter.from_pretrained(tmp_path / "packaged").card["datasets"] == meta["datasets"]
