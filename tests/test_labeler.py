"""Rule labeler: negation / normality / history scoping, label edge cases, sentence extraction, phantoms, dev data."""

from __future__ import annotations

import numpy as np
import pytest

from ctagrg.labels import LABEL_INDEX, LABELS
from ctagrg.text.extract import extract_sentences, join_sentences
from ctagrg.text.labeler import RuleLabeler, get_labeler
from ctagrg.text.scoring import score_labels, split_of


@pytest.fixture(scope="module")
def labeler() -> RuleLabeler:
    return RuleLabeler()


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Pericardial effusion-thickening was not observed.", set()),
        ("No enlarged lymph nodes in prevascular, pre-paratracheal or subcarinal dimensions were detected.", set()),
        ("Mediastinal main vascular structures, heart contour, size are normal.", set()),
        ("Bilateral adrenal glands were normal and no space-occupying lesion was detected.", set()),
        ("The pleural effusion on the left, which was observed before, was not detected in the current study.", set()),
        ("The right jugular catheter, which was observed in the previous examination, was removed.", set()),
        ("No nodule was detected, there is atelectasis in the left lower lobe.", {"Atelectasis"}),
        ("There is no significant change in the 6 mm nodule in the right upper lobe.", {"Lung nodule"}),
        ("Calcific atheroma plaques are observed in the aorta and coronary arteries.",
         {"Arterial wall calcification", "Coronary artery wall calcification"}),
        ("Calcific plaques are observed in the coronary arteries.", {"Coronary artery wall calcification"}),
        ("There are emphysematous changes in both lungs.", {"Emphysema"}),
        ("Linear fibroatelectasis sequelae changes in both lower lobes.", {"Pulmonary fibrotic sequela"}),
        ("There is a hypodense nodule of 12 mm in the left thyroid lobe.", set()),
        ("A 4.5x3 mm subpleural lymph node is seen in the major fissure of the left lung.", {"Lung nodule"}),
        ("A few millimetric lymph nodes are observed in the mediastinum.", {"Lymphadenopathy"}),
        ("The cardiothoracic index increased in favor of the heart.", {"Cardiomegaly"}),
        ("Port catheter terminates at the superior vena cava.", {"Medical material"}),
        ("Hepatic and portal venous systems are normal.", set()),
        ("It was not found to be compatible with pneumonia; patchy ground glass opacities in the left lung.",
         {"Lung opacity"}),
        ("Mosaic attenuation pattern in both lungs (small airway disease?).", {"Mosaic attenuation pattern"}),
        ("In the patient with a history of pleural effusion, atelectasis is seen in the right lower lobe.",
         {"Atelectasis"}),
        ("The aortic wall shows no calcification.", set()),
        ("The coronary arteries are patent.", set()),
        ("Ground glass areas consistent with alveolar hemorrhage in both lungs.", {"Lung opacity"}),
        ("Liver parenchyma density is decreased in line with fatty deposits.", set()),
        ("Lymph nodes in the mediastinum and hila are of normal size.", set()),
        ("A well-circumscribed nodule of 4 mm is present in the right lower lobe.", {"Lung nodule"}),
        ("In the previous examination, there was a consolidation in the right lower lobe.", set()),
        ("The consolidation seen in the previous examination has increased in size.", {"Consolidation"}),
        ("An effusion of 9 mm is observed in the thickest part of the pericardium.", {"Pericardial effusion"}),
        ("Calcified plaques are seen in the coronary arteries of this patient in the ascending aorta.",
         {"Arterial wall calcification", "Coronary artery wall calcification"}),
        ("Calcified plaques in the abdominal aorta and iliac arteries.", set()),
        ("Ground glass areas and sequelae changes in the left lower lobe.",
         {"Lung opacity", "Pulmonary fibrotic sequela"}),
        ("The ground glass areas in the right lower lobe are completely regressed.", set()),
        ("Prominent interlobular septa in both lower lobes.", {"Interlobular septal thickening"}),
        ("A small pleural effusion on the right was not seen in the previous examination.", {"Pleural effusion"}),
        ("The right middle lobe is collapsed.", {"Atelectasis"}),
        # A density the report itself calls atelectasis or consolidation is that finding, not an opacity ...
        ("Patchy densities consistent with subsegmental atelectasis are seen in the left lower lobe.", {"Atelectasis"}),
        ("In the right lower lobe an increase in density is seen, which is compatible with the consolidation area.",
         {"Consolidation"}),
        # ... but a qualified attribution, or ground glass next to the attribution, still counts as opacity.
        ("Linear density increase consistent with band atelectasis in the lingula.", {"Lung opacity"}),
        ("Ground glass densities consistent with atelectasis in both lung bases.", {"Lung opacity", "Atelectasis"}),
    ],
)
def test_sentence_labels(labeler: RuleLabeler, sentence: str, expected: set[str]) -> None:
    assert labeler.sentence_labels(sentence) == expected


def test_label_reports_shape_order_and_empty(labeler: RuleLabeler) -> None:
    texts = ["A 5 mm nodule in the right upper lobe. No pleural effusion.", "", float("nan"), "Hiatal hernia."]
    labels = labeler.label_reports(texts)  # type: ignore[arg-type]
    assert labels.shape == (4, 18) and labels.dtype == np.int64
    assert labels[0].nonzero()[0].tolist() == [LABEL_INDEX["Lung nodule"]]
    assert labels[1].sum() == 0 and labels[2].sum() == 0
    assert labels[3].nonzero()[0].tolist() == [LABEL_INDEX["Hiatal hernia"]]
    assert labeler.label_reports([]).shape == (0, 18)


def test_sentences_by_label_and_extraction(labeler: RuleLabeler) -> None:
    text = ("Trachea is open. A 12 mm solid nodule is seen in the upper lobe of the right lung. "
            "No pleural effusion. Mild bilateral pleural effusion is seen.\n12 mm solid nodule in the right lung.")
    by_label = labeler.sentences_by_label(text)
    assert list(by_label) == ["Lung nodule", "Pleural effusion"]  # LABELS order
    assert by_label["Pleural effusion"] == ["Mild bilateral pleural effusion is seen."]
    rows = extract_sentences(labeler, ["v1"], [text])
    assert rows[0] == ("v1", "Lung nodule", "A 12 mm solid nodule is seen in the upper lobe of the right lung. "
                                            "12 mm solid nodule in the right lung.")
    assert join_sentences(["Minimal effusion.", "minimal effusion", "Other."]) == "Minimal effusion. Other."


def test_get_labeler_specs() -> None:
    assert isinstance(get_labeler("rules"), RuleLabeler)
    with pytest.raises(ValueError, match="unknown labeler 'bert'"):
        get_labeler("bert")


def test_phantom_reports_labels_and_sentences(labeler: RuleLabeler) -> None:
    """Phantom reports (another engineer's generator): labels exact and each finding's sentence recovered."""
    import ctagrg.phantom.anatomy as anatomy_mod
    from ctagrg.phantom.findings import sample_case
    from ctagrg.phantom.reports import write_report

    truth, pred, n_sentences = [], [], 0
    for seed in range(60):
        rng = np.random.default_rng(seed)
        case = sample_case(rng, anatomy_mod.sample_anatomy(rng, 300.0), min_prevalence=0.3)
        findings, impression, sentences = write_report(case, rng)
        truth.append([int(name in sentences) for name in LABELS])
        pred.append(labeler.label_text(findings + "\n" + impression))
        by_label = labeler.sentences_by_label(findings)
        for name, sentence in sentences.items():
            assert by_label.get(name) == [sentence], (name, sentence, by_label.get(name))
            n_sentences += 1
    assert n_sentences > 100
    assert score_labels(np.array(truth), np.array(pred)).micro_f1 >= 0.99


def test_dev_reports_develop_part(labeler: RuleLabeler, shared_data) -> None:
    """Regression guard on the 800 manually labelled reports (figures in docs/labeler.md)."""
    import pandas as pd

    reports = pd.read_csv(shared_data / "reports" / "dev_reports.csv")
    labels = pd.read_csv(shared_data / "reports" / "dev_labels.csv")
    texts = (reports.Findings_EN.fillna("") + "\n" + reports.Impressions_EN.fillna("")).tolist()
    pred = labeler.label_reports(texts)
    scores = score_labels(labels[list(LABELS)].to_numpy(), pred)
    assert scores.micro_f1 >= 0.93 and scores.macro_f1 >= 0.92
    assert sum(split_of(n) == "holdout" for n in reports.VolumeName) == 255
