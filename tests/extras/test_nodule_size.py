"""Nodule measurement (ctagrg.extras.nodule): sizes of drawn spheres, isolation, halves, calibration (step 1's
``nodule_size`` extension), the restated sentence, and the Reporter's ``nodule_size`` post-processor stating the
measured size."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ctagrg.data.preprocessed import hu_from_preprocessed
from ctagrg.extras.nodule.measure import (
    NoduleSizeConfig,
    calibrate_offset,
    largest_isolated_radius,
    nodule_diameter_mm,
    solid_spheres,
)
from ctagrg.text.attributes import restate_size, size_mm_from_text

SPACING = (4.0, 2.0, 2.0)  # the demo's grid (mm, SLP)
SHAPE = (40, 96, 96)
LUNG_HU, SOLID_HU = -850.0, 40.0


def coords(shape=SHAPE, spacing=SPACING) -> tuple[np.ndarray, ...]:
    """Voxel-centre coordinates in mm, one array per axis (broadcastable)."""
    return tuple((np.arange(n) + 0.5) * s for n, s in zip(shape, spacing, strict=True))


def lung_with(nodules: list[tuple[tuple[float, float, float], float]], vessel: bool = False,
              wall: bool = False) -> np.ndarray:
    """A block of aerated lung (HU) with solid spheres (centre mm, diameter mm); optionally a 4 mm vessel along
    axis 2 touching the first sphere, and a 20 mm slab of soft tissue along one face (a chest wall)."""
    z, y, x = np.meshgrid(*coords(), indexing="ij")
    hu = np.full(SHAPE, LUNG_HU, np.float32)
    for (cz, cy, cx), d in nodules:
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= (d / 2) ** 2] = SOLID_HU
    if vessel:
        (cz, cy, cx), d = nodules[0]
        hu[((z - cz) ** 2 + (y - (cy + d / 2 + 1.0)) ** 2 <= 2.0**2)] = SOLID_HU
    if wall:
        hu[:, :, -10:] = SOLID_HU
    return hu


CONFIG = NoduleSizeConfig()


@pytest.mark.parametrize("diameter", [10.0, 16.0, 24.0])
def test_an_isolated_sphere_is_measured_to_its_diameter(diameter: float) -> None:
    hu = lung_with([((80.0, 96.0, 90.0), diameter)])
    d = nodule_diameter_mm(hu, SPACING, CONFIG)
    assert d is not None and abs(d - diameter) <= 3.0, d


def test_a_touching_vessel_does_not_change_the_size_and_a_chest_wall_is_no_nodule() -> None:
    alone = nodule_diameter_mm(lung_with([((80.0, 96.0, 90.0), 20.0)]), SPACING, CONFIG)
    touched = nodule_diameter_mm(lung_with([((80.0, 96.0, 90.0), 20.0)], vessel=True, wall=True), SPACING, CONFIG)
    assert alone is not None and touched is not None and abs(touched - alone) <= 1.0
    # the wall alone: far larger inscribed spheres, none with lung around them
    wall_only = lung_with([], wall=True)
    spheres = solid_spheres(wall_only, SPACING, CONFIG)
    assert spheres.radii_mm.max() >= 10.0 and (spheres.lung_fraction < CONFIG.min_lung_fraction).all()
    assert nodule_diameter_mm(wall_only, SPACING, CONFIG) is None


def test_the_shell_fractions_split_lung_between_and_solid() -> None:
    hu = lung_with([((80.0, 96.0, 90.0), 16.0)])
    spheres = solid_spheres(hu, SPACING, CONFIG)
    best = int(np.argmax(spheres.radii_mm))
    assert spheres.lung_fraction[best] == 1.0 and spheres.between_fraction[best] == 0.0
    # the same ball in fat (-90 HU): above CONFIG's solid_hu (-400), one solid region with the ball; with soft tissue
    # as solid (above -30 HU) the ball stands alone and its shell is all "between" lung and solid
    hu[hu < CONFIG.lung_hu] = -90.0
    soft = NoduleSizeConfig(solid_hu=-30.0, lung_hu=-400.0, gap_mm=4.5, min_radius_mm=4.0)
    spheres = solid_spheres(hu, SPACING, soft)
    best = int(np.argmax(spheres.radii_mm))
    assert spheres.between_fraction[best] == 1.0 and spheres.lung_fraction[best] == 0.0
    empty = solid_spheres(np.full((8, 8, 8), -860.0), SPACING, CONFIG)
    assert empty.between_fraction.shape == (0,) and empty.lung_fraction.shape == (0,)


def test_the_side_selects_the_lateral_half() -> None:
    # SLP: axis 1 runs from the patient's right (low index) to the left; 96 voxels of 2 mm, midline at 96 mm
    hu = lung_with([((80.0, 50.0, 90.0), 24.0), ((80.0, 150.0, 90.0), 12.0)])
    spheres = solid_spheres(hu, SPACING, CONFIG)
    right = largest_isolated_radius(spheres, SHAPE[1], CONFIG, "right")
    left = largest_isolated_radius(spheres, SHAPE[1], CONFIG, "left")
    anywhere = largest_isolated_radius(spheres, SHAPE[1], CONFIG, None)
    assert right is not None and left is not None and right > left + 3.0 and anywhere == right
    d_left = nodule_diameter_mm(hu, SPACING, CONFIG, sides=("left",))
    assert d_left is not None and abs(d_left - 12.0) <= 3.0
    assert nodule_diameter_mm(hu, SPACING, CONFIG, sides=("left", "right")) == pytest.approx(2 * right + 2.0)
    with pytest.raises(ValueError, match="side must be one of"):
        largest_isolated_radius(spheres, SHAPE[1], CONFIG, "middle")


def test_nothing_solid_gives_none() -> None:
    assert nodule_diameter_mm(np.full(SHAPE, LUNG_HU, np.float32), SPACING, CONFIG) is None


def test_calibrate_offset_is_the_median_difference() -> None:
    # differences 3, 3, 40 (a measurement that picked another structure), 3, 4: the outlier does not move it
    assert calibrate_offset([5.0, 8.0, 10.0, 3.0, 4.0], [13.0, 19.0, 60.0, 9.0, 12.0]) == pytest.approx(3.0)
    assert calibrate_offset([5.0, 8.0], [13.0, 20.0]) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="equally many"):
        calibrate_offset([], [])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="solid_hu"):
        NoduleSizeConfig(solid_hu=-800.0, lung_hu=-700.0)
    with pytest.raises(ValueError, match="min_lung_fraction"):
        NoduleSizeConfig(min_lung_fraction=0.0)


def test_restate_size_replaces_the_one_stated_size() -> None:
    assert restate_size("A 1.2 cm nodule in the right upper lobe.", 17.4) == "A 17 mm nodule in the right upper lobe."
    assert restate_size("Nodule of 12x9 mm in the left lung.", 20.6) == "Nodule of 21 mm in the left lung."
    assert restate_size("A NODULE OF 12 MM.", 8.0) == "A NODULE OF 8 mm."
    assert restate_size("A nodule in the left lung.", 8.0) == "A nodule in the left lung."
    assert size_mm_from_text(restate_size("A 30 millimetres nodule.", 14.2)) == 14.0
    # several sizes or a range: one number cannot replace them, the sentence stays as written
    for sentence in ("A nodule measuring 12 mm x 9 mm.", "A 5-6 mm nodule.", "A 5 to 6 mm nodule.",
                     "Nodules up to 8 mm, the largest 14 mm."):
        assert restate_size(sentence, 16.0) == sentence
    # halves round up, not to even
    assert restate_size("A 5 mm nodule.", 16.5) == "A 17 mm nodule."
    assert restate_size("A 5 mm nodule.", 17.5) == "A 18 mm nodule."


# -- the Reporter --------------------------------------------------------------------------------------------
def _reporter(enabled: bool, axcodes: str = "SLP"):
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.generation.generate import GenerationSettings
    from ctagrg.generation.reporter import Reporter, ReporterConfig
    from ctagrg.labels import LABEL_INDEX
    from ctagrg.models.ctnet import CTNetConfig
    from ctagrg.models.heads import HeadsConfig
    from ctagrg.models.resnet import ResNetConfig
    from ctagrg.models.step1 import Step1Model, VisualModelConfig
    from tests.test_reporter import tiny_decoder

    torch.manual_seed(0)
    ctnet = CTNetConfig(input_shape=SHAPE, trunk=ResNetConfig(width=4, layers=(1, 1, 1, 1)), input_pool=(2, 4, 4),
                        reducer="pool", embed_dim=32)
    heads = HeadsConfig(in_dim=32, embed_dim=16, classifier_hidden=8, pretrain_hidden=(8, 8))
    visual = Step1Model(VisualModelConfig(ctnet=ctnet, heads=heads)).eval()
    thresholds = [2.0] * 18  # nothing detected but the nodule
    thresholds[LABEL_INDEX["Lung nodule"]] = 0.0
    config = ReporterConfig(generation=GenerationSettings(max_new_tokens=4),
                            postprocess={"nodule_size": {"offset_mm": 2.5}} if enabled else {})
    preprocess = PreprocessConfig(spacing=SPACING, shape=SHAPE, hu_min=-1000.0, hu_max=1500.0, axcodes=axcodes)
    return Reporter(visual, tiny_decoder(), None, thresholds, preprocess, config)


@pytest.fixture
def fixed_sentences(monkeypatch: pytest.MonkeyPatch) -> str:
    """The decoder's sentences replaced by a fixed nodule sentence that states 5 mm."""
    sentence = "A 5 mm solid nodule is seen in the right lung."
    monkeypatch.setattr("ctagrg.generation.reporter.generate_sentences",
                        lambda decoder, tokenizer, embeddings, labels, settings: [sentence] * len(labels))
    return sentence


def test_the_reporter_states_the_measured_size(fixed_sentences: str) -> None:
    hu = lung_with([((80.0, 50.0, 90.0), 22.0)])
    volume = (hu + 1000.0) / 2500.0 - 0.449
    reporter = _reporter(enabled=True)
    report = reporter.report(volume)
    nodule = report.abnormalities["Lung nodule"]
    (measure,) = reporter.postprocessors
    assert measure.config == dataclasses.replace(CONFIG, offset_mm=2.5)
    expected = nodule_diameter_mm(hu_from_preprocessed(volume, (-1000.0, 1500.0), 0.449), SPACING, measure.config)
    # size_mm is the measurement rounded to 0.1 mm; the sentence states it rounded half up to whole mm
    assert nodule.detected and nodule.size_mm == round(expected, 1) and abs(nodule.size_mm - 22.0) <= 3.5
    stated = int(expected + 0.5)
    assert nodule.sentence == fixed_sentences.replace("5 mm", f"{stated} mm")
    assert nodule.numbers == [{"text": f"{stated} mm", "start": 2, "end": 2 + len(f"{stated} mm"),
                               "value_mm": float(stated), "source": "measured"}]
    assert report.text == nodule.sentence
    assert report.to_dict()["abnormalities"]["Lung nodule"]["size_mm"] == pytest.approx(nodule.size_mm)
    assert all(a.size_mm is None for label, a in report.abnormalities.items() if label != "Lung nodule")

    off_reporter = _reporter(enabled=False)
    assert off_reporter.postprocessors == []
    off = off_reporter.report(volume).abnormalities["Lung nodule"]
    assert off.sentence == fixed_sentences and off.size_mm is None
    assert [n["source"] for n in off.numbers] == ["decoder"]  # the decoder's own "5 mm"


def test_the_reporter_refuses_nodule_size_on_other_axes_or_a_narrow_window() -> None:
    from ctagrg.config import ConfigError
    from ctagrg.extras.nodule.measure import check_window

    with pytest.raises(ConfigError, match="^postprocess.nodule_size needs SLP volumes"):
        _reporter(enabled=True, axcodes="RAS")
    check_window(CONFIG, -1000.0, 200.0, "ok")  # CT-RATE's window
    with pytest.raises(ValueError, match=r"mediastinal: nodule_size needs an HU window that keeps lung "
                                         r"\(< -700 HU\) and solid tissue \(> -400 HU\) apart; the preprocessing's is "
                                         r"\[-160, 240\]"):
        check_window(CONFIG, -160.0, 240.0, "mediastinal")
    with pytest.raises(ValueError, match="apart"):
        check_window(CONFIG, -1000.0, -450.0, "lung only")


def test_the_nodule_is_measured_in_the_halves_where_step_1_found_it() -> None:
    """The demo's path: a model with lateral halves and half thresholds (the post-processor reads the batch's half
    logits and the visual model's half thresholds); without half logits, the whole volume."""
    from types import SimpleNamespace

    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.extras.nodule.postprocess import NoduleSizePostprocessor
    from ctagrg.generation.postprocess import ReportBatch
    from ctagrg.labels import LABEL_INDEX

    i = LABEL_INDEX["Lung nodule"]
    hu = lung_with([((80.0, 50.0, 90.0), 24.0), ((60.0, 140.0, 60.0), 12.0)])  # right 24 mm, left 12 mm
    volume = (hu + 1000.0) / 2500.0 - 0.449
    visual = SimpleNamespace(heads=SimpleNamespace(half_threshold=torch.full((18,), 0.6)))
    preprocess = PreprocessConfig(spacing=SPACING, shape=SHAPE, hu_max=1500.0)
    measure = NoduleSizePostprocessor(CONFIG, preprocess, visual)
    detected = torch.zeros(1, 18, dtype=torch.bool)
    detected[0, i] = True

    def measured(outputs: dict) -> float:
        batch = ReportBatch(volumes=volume[None], preprocess=preprocess, outputs=outputs, detected=detected,
                            sentences=[{i: "A 5 mm nodule."}])
        measure(batch)
        size = batch.measurements[0][i]["size_mm"]
        assert size is not None and batch.sentences[0][i] == f"A {int(size + 0.5)} mm nodule."
        assert batch.warnings == [[]] and set(batch.measurements[0]) == {i}
        return size

    def in_halves(p_right: float, p_left: float) -> float:
        halves = torch.zeros(1, 2, 18)
        halves[0, :, i] = torch.logit(torch.tensor([p_right, p_left]))
        return measured({"half_logits": halves})

    right, left = in_halves(0.9, 0.1), in_halves(0.1, 0.9)
    assert abs(right - 24.0) <= 3.5 and abs(left - 12.0) <= 3.5
    assert in_halves(0.9, 0.9) == right  # both halves on: the larger
    assert in_halves(0.3, 0.5) == left  # neither on: the higher half
    whole = measured({})
    hu = hu_from_preprocessed(volume, (-1000.0, 1500.0), 0.449)
    assert whole == pytest.approx(nodule_diameter_mm(hu, SPACING, CONFIG))
    assert whole == right  # the larger of the two nodules


def test_from_training_outputs_loads_step_1s_postprocess_json(tmp_path: Path, gpt2_tokenizer_dir: Path) -> None:
    """step 1's best/postprocess.json becomes the Reporter's post-processors, in its order; a section naming no
    installed post-processor is refused with the file named."""
    from ctagrg.config import ConfigError
    from ctagrg.extras.nodule.postprocess import NoduleSizePostprocessor
    from ctagrg.extras.ood import OODWarningConfig, OODWarningPostprocessor
    from ctagrg.generation.reporter import Reporter

    reporter = _reporter(enabled=False)
    step1 = tmp_path / "step1" / "best"
    reporter.visual.save_pretrained(step1)
    (step1 / "thresholds.json").write_text(json.dumps(reporter.thresholds))
    saved = dataclasses.replace(CONFIG, offset_mm=3.25, calibration={"measured": 7})
    sections = {"nodule_size": dataclasses.asdict(saved), "ood_warning": {"fraction": 0.02}}
    (step1 / "postprocess.json").write_text(json.dumps(sections))
    reporter.decoder.save_pretrained(tmp_path / "dec" / "best")
    (tmp_path / "pre.json").write_text(json.dumps(dataclasses.asdict(reporter.preprocess)))

    def build() -> Reporter:
        return Reporter.from_training_outputs(step1, tmp_path / "dec" / "best", preprocess=tmp_path / "pre.json",
                                              tokenizer_dir=gpt2_tokenizer_dir)

    built = build()
    # the sections in the file's order, each resolved to its full options (defaults filled in)
    assert built.config.postprocess == {"nodule_size": sections["nodule_size"],
                                        "ood_warning": {"fraction": 0.02, "limit_sd": 8.0}}
    assert list(built.config.postprocess) == ["nodule_size", "ood_warning"]
    assert [type(p) for p in built.postprocessors] == [NoduleSizePostprocessor, OODWarningPostprocessor]
    assert built.postprocessors[0].config == saved
    assert built.postprocessors[1].config == OODWarningConfig(fraction=0.02)
    # without the file: no post-processor
    (step1 / "postprocess.json").unlink()
    assert build().config.postprocess == {} and build().postprocessors == []
    (step1 / "postprocess.json").write_text(json.dumps({"nodule_sizes": {}}))
    file = step1 / "postprocess.json"
    unknown = re.escape(f"{file}.nodule_sizes: unknown report post-processor (known: ")
    with pytest.raises(ConfigError, match=f"^{unknown}.*nodule_size"):
        build()


# -- step 1's calibration --------------------------------------------------------------------------------------
def nodule_dataset(tmp_path: Path) -> tuple[dict[str, Path], str, dict[str, tuple[str, float]]]:
    """A cache of (8, 32, 16) lung volumes at 4 x 2 x 2 mm, each with one solid sphere of 8-14 mm on the right or
    the left (SLP axis 1), a lung nodule in the labels and a sentence stating its size and side; with the
    cache's preprocess.json. Returns (labels CSVs, sentences CSV, name -> (side, size))."""
    from ctagrg.data.cache import cache_path, save_cached
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.extras.cnn3d.config import CNN3DConfig
    from ctagrg.labels import LABEL_INDEX, LABELS
    from tests.extras.test_attributes import write_sentences

    hu_min, hu_max, offset = CNN3DConfig().input_hu
    shape = (8, 32, 16)
    (tmp_path / "cache").mkdir()
    pp = PreprocessConfig(spacing=SPACING, shape=shape, hu_min=hu_min, hu_max=hu_max, offset=offset)
    (tmp_path / "cache" / "preprocess.json").write_text(json.dumps(dataclasses.asdict(pp)))
    z, y, x = np.meshgrid(*coords(shape), indexing="ij")
    rows, sentences, truth = {"train": [], "valid": []}, [], {}
    for split, n in (("train", 8), ("valid", 8)):
        for i in range(n):
            side, size = ("left" if i % 2 else "right"), 8.0 + 2 * (i % 4)
            hu = np.full(shape, LUNG_HU, np.float32)
            cy = 48.0 if side == "left" else 16.0
            hu[(z - 16.0) ** 2 + (y - cy) ** 2 + (x - 16.0) ** 2 <= (size / 2) ** 2] = SOLID_HU
            name = f"{split}_{i}_a_1"
            save_cached(cache_path(tmp_path / "cache", name), (hu - hu_min) / (hu_max - hu_min) - offset,
                        -offset, 1.0 - offset)
            y_ = np.zeros(18, int)
            y_[LABEL_INDEX["Lung nodule"]] = 1
            rows[split].append(f"{name}.nii.gz," + ",".join(map(str, y_)))
            sentences.append((f"{name}.nii.gz", "Lung nodule", f"A {size:.0f} mm nodule is seen in the {side} lung."))
            truth[name] = (side, size)
    csvs = {}
    for split, r in rows.items():
        csvs[split] = tmp_path / f"{split}.csv"
        csvs[split].write_text("VolumeName," + ",".join(LABELS) + "\n" + "\n".join(r) + "\n")
    return csvs, write_sentences(tmp_path / "sentences.csv", sentences), truth


def test_step1_calibrates_the_offset_on_validation_nodules(tmp_path: Path) -> None:
    from ctagrg.cli.main import main as cli_main
    from ctagrg.data.cache import load_cached
    from ctagrg.extras.cnn3d.config import CNN3DConfig
    from tests.extras.test_attributes import LATERAL

    csvs, sentences, truth = nodule_dataset(tmp_path)
    sets = ["train.batch_size=4", "train.tensorboard=false", "train.epochs=1", f"data.cache_dir={tmp_path / 'cache'}",
            f"data.train_labels={csvs['train']}", f"data.valid_labels={csvs['valid']}", *LATERAL,
            f"extras.nodule_size.sentences_csv={sentences}", f"train.out_dir={tmp_path / 'cls'}"]
    assert cli_main(["train", "classifier", *sum((["--set", s] for s in sets), [])]) == 0
    sections = json.loads((tmp_path / "cls" / "best" / "postprocess.json").read_text())
    assert list(sections) == ["nodule_size"]
    saved = sections["nodule_size"]
    # the same measurement by hand: the stated side's half of each validation volume
    radii, stated = [], []
    for name, (side, size) in truth.items():
        if name.startswith("valid"):
            volume = load_cached(tmp_path / "cache" / f"{name}.safetensors")
            lo, hi, offset = CNN3DConfig().input_hu
            hu = hu_from_preprocessed(volume, (lo, hi), offset)
            r = largest_isolated_radius(solid_spheres(hu, SPACING, CONFIG), volume.shape[1], CONFIG, side)
            assert r is not None
            radii.append(r)
            stated.append(size)
    assert saved["offset_mm"] == pytest.approx(calibrate_offset(radii, stated))
    assert saved["calibration"]["calibrated"] is True
    assert saved["calibration"]["validation_nodules"] == saved["calibration"]["measured"] == 8
    assert saved["calibration"]["validation_within_5mm_in_sample"] == 1.0
    assert saved["calibration"]["sentences_from"] == sentences
    assert NoduleSizeConfig(**saved).offset_mm == saved["offset_mm"]
    # retrained into the same folder with the measurement off: the old calibration does not stay behind
    off = [s for s in sets if not s.startswith("extras.nodule_size")] + ["train.resume=false"]
    assert cli_main(["train", "classifier", *sum((["--set", s] for s in off), [])]) == 0
    assert not (tmp_path / "cls" / "best" / "postprocess.json").exists()


def test_step1_refuses_nodule_size_without_sentences(tmp_path: Path) -> None:
    from ctagrg.config import ConfigError, load_config
    from ctagrg.training.visual_tasks import ClassifierTask, ClassifierTaskConfig

    cfg = load_config(ClassifierTaskConfig, None, ["extras.nodule_size={}", "data.valid_labels=v.csv"])
    with pytest.raises(ConfigError, match="^extras.nodule_size.sentences_csv: not set, and the stage has no "
                                          "extras.attributes to take it from"):
        ClassifierTask(cfg)
    with pytest.raises(ConfigError, match="^extras.nodule_size: needs data.valid_labels"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, ["extras.nodule_size.sentences_csv=s.csv"]))
    # the section itself turns the calibration on: no "enabled" flag
    with pytest.raises(ConfigError, match=r"^extras.nodule_size.enabled: removed: the section's presence turns"):
        ClassifierTask(load_config(ClassifierTaskConfig, None, ["extras.nodule_size.enabled=true"]))


def test_the_model_card_says_sizes_are_measured() -> None:
    from ctagrg.data.preprocess import PreprocessConfig
    from ctagrg.extras.nodule.postprocess import NoduleSizePostprocessor
    from ctagrg.generation.model_card import render_model_card

    on = dataclasses.replace(CONFIG, offset_mm=3.0, calibration={"calibrated": True, "measured": 41})
    note = NoduleSizePostprocessor(on, PreprocessConfig(spacing=SPACING, shape=SHAPE, hu_max=1500.0), None).card_note()
    card = render_model_card(preprocess={}, thresholds=[0.5] * 18, generation={}, notes=[note])
    assert "**measured, not generated**" in card
    assert "2 x radius + 3.00 mm (calibrated on 41 validation nodules)" in card
    paragraph = card.split("A detected lung nodule")[1].split("\n\n")[0]
    assert not any(line.startswith(("+ ", "- ", "* ")) for line in paragraph.splitlines())  # no list item in Markdown
    uncalibrated = NoduleSizePostprocessor(CONFIG, PreprocessConfig(spacing=SPACING, shape=SHAPE, hu_max=1500.0),
                                           None).card_note()
    assert "2 x radius + 2.00 mm (not calibrated)" in uncalibrated
    off = render_model_card(preprocess={}, thresholds=[0.5] * 18, generation={})
    assert "measured, not generated" not in off


def test_a_mirrored_volume_gives_the_mirrored_measurement() -> None:
    hu = lung_with([((80.0, 50.0, 90.0), 21.0), ((60.0, 140.0, 60.0), 13.0)], vessel=True, wall=True)
    a, b = solid_spheres(hu, SPACING, CONFIG), solid_spheres(hu[:, ::-1].copy(), SPACING, CONFIG)
    mirrored = a.centres.copy()
    mirrored[:, 1] = SHAPE[1] - 1 - mirrored[:, 1]
    order_a, order_b = np.lexsort(mirrored.T), np.lexsort(b.centres.T)
    assert np.array_equal(mirrored[order_a], b.centres[order_b])
    assert np.array_equal(a.radii_mm[order_a], b.radii_mm[order_b])
    assert np.array_equal(a.lung_fraction[order_a], b.lung_fraction[order_b])
    right = largest_isolated_radius(a, SHAPE[1], CONFIG, "right")
    assert right is not None and largest_isolated_radius(b, SHAPE[1], CONFIG, "left") == right
