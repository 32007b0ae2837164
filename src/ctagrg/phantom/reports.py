"""CT-RATE-style report text for a phantom patient: Findings_EN (normal and abnormal sentences) and Impressions_EN.

Later stages depend on two properties of the abnormal sentences, so keep them when adding phrasings:
- each is **self-contained** and names exactly one abnormality in standard vocabulary (the report labeler must
  recover the 18 labels from the text);
- lateralised findings state their side with the words ``right``, ``left`` or ``bilateral``, and nodules state
  their size as ``<number> mm`` (grounding is scored by reading these back).
Normal sentences for absent findings are plainly negated ("No pleural effusion is seen.").
All phrasings are written for this project; none is copied from CT-RATE.
"""

from __future__ import annotations

import numpy as np

from ctagrg.phantom.findings import Case, Finding

Templates = tuple[str, ...]

POSITIVE: dict[str, Templates] = {
    "Lung nodule": (
        "A {size} mm solid nodule is seen in the {side} {lobe} lobe.",
        "In the {lobe} lobe of the {side} lung, a solid nodule measuring {size} mm was observed.",
        "There is a {size} mm nodule in the {side} lung {lobe} lobe.",
        "A well-circumscribed nodule with a diameter of {size} mm is present in the {side} {lobe} lobe.",
        "A solid pulmonary nodule of {size} mm was detected in the {lobe} lobe of the {side} lung.",
    ),
    "Pleural effusion": (
        "A {extent} {side} pleural effusion measuring {size} mm in thickness is seen.",
        "{Side} pleural effusion of {extent} amount was detected, with a maximum depth of {size} mm.",
        "There is a {extent} {side} pleural effusion layering posteriorly, {size} mm thick.",
        "{Extent} {side} pleural effusion was observed in the dependent part of the pleural space.",
        "A {side} pleural effusion reaching {size} mm was noted.",
    ),
    "Consolidation": (
        "An area of consolidation with air bronchograms, about {size} mm across, is seen in the {side} {lobe} lobe.",
        "Consolidation containing air bronchograms was observed in the {lobe} lobe of the {side} lung.",
        "There is a focal consolidation in the {side} {lobe} lobe measuring approximately {size} mm.",
        "In the {side} lung {lobe} lobe, a consolidation area with air bronchograms was detected.",
        "Focal consolidation is present in the {lobe} lobe of the {side} lung.",
    ),
    "Atelectasis": (
        "Linear atelectasis is seen in {loc}, with mild volume loss.",
        "Plate-like atelectasis was observed in {loc}.",
        "There are atelectatic changes in {loc} with mild volume loss.",
        "Subsegmental atelectasis is present in {loc}.",
        "Linear atelectasis was detected in {loc}, accompanied by slight volume loss.",
    ),
    "Lung opacity": (
        "{Extent} ground-glass opacities are seen in {loc}.",
        "Patchy ground-glass opacities were observed in {loc}.",
        "There are areas of ground-glass opacity in {loc}.",
        "Hazy ground-glass opacity is present in {loc}.",
        "Ground-glass opacity areas were detected in {loc}.",
    ),
    "Emphysema": (
        "{Extent} centrilobular emphysema is seen, predominantly in the upper lobes of both lungs.",
        "Emphysematous changes of {extent} degree are observed in both lungs, most prominent in the upper lobes.",
        "There is {extent} emphysema in the bilateral upper lobes.",
        "Centrilobular emphysema, {extent} in severity, was detected with upper lobe predominance.",
        "{Extent} emphysematous areas are present in the upper lobes of both lungs.",
    ),
    "Pulmonary fibrotic sequela": (
        "Linear fibrotic sequelae are seen in the apical part of {loc}.",
        "Fibrotic sequela changes were observed in {loc}.",
        "There are linear and reticular fibrotic densities in {loc}, consistent with sequelae.",
        "Fibrotic sequelae are present in {loc}.",
        "Sequelae fibrotic changes were detected in {loc}.",
    ),
    "Mosaic attenuation pattern": (
        "A mosaic attenuation pattern is seen in both lungs.",
        "Mosaic attenuation pattern was observed diffusely in the lung parenchyma.",
        "There is a mosaic attenuation pattern throughout both lungs.",
        "The lung parenchyma shows a diffuse mosaic attenuation pattern.",
        "Areas of mosaic attenuation were detected in both lungs.",
    ),
    "Peribronchial thickening": (
        "Peribronchial thickening is seen in both lungs.",
        "Diffuse peribronchial thickening was observed.",
        "There is bilateral peribronchial thickening.",
        "Peribronchial wall thickening was detected in both lungs.",
        "Bronchial wall thickening consistent with peribronchial thickening is present in both lungs.",
    ),
    "Bronchiectasis": (
        "Cylindrical bronchiectasis is seen in {loc}.",
        "Bronchiectasis was observed in {loc}.",
        "There are bronchiectatic changes in {loc}.",
        "Dilated bronchi consistent with bronchiectasis are present in {loc}.",
        "Bronchiectasis with dilated airways was detected in {loc}.",
    ),
    "Interlobular septal thickening": (
        "Interlobular septal thickening is seen in the periphery of {loc}.",
        "Smooth interlobular septal thickening was observed in the peripheral parts of {loc}.",
        "There is interlobular septal thickening in {loc}.",
        "Peripheral interlobular septal thickenings were detected in {loc}.",
        "Interlobular septal thickening with a polygonal pattern is present in {loc}.",
    ),
    "Cardiomegaly": (
        "The heart is enlarged, consistent with {extent} cardiomegaly.",
        "{Extent} cardiomegaly is observed.",
        "Cardiomegaly is present, with an increased cardiothoracic ratio.",
        "Heart size is increased, in keeping with {extent} cardiomegaly.",
        "There is {extent} cardiomegaly.",
    ),
    "Pericardial effusion": (
        "A {extent} pericardial effusion measuring {size} mm in thickness is seen.",
        "Pericardial effusion reaching {size} mm was observed around the heart.",
        "There is a {extent} pericardial effusion, {size} mm thick.",
        "Fluid of {size} mm thickness surrounds the heart, consistent with pericardial effusion.",
        "{Extent} pericardial effusion was detected.",
    ),
    "Arterial wall calcification": (
        "{Amount} calcific atherosclerotic plaques are seen in the {region}.",
        "Atherosclerotic calcifications were observed in the wall of the {region}.",
        "There are {amount} calcified atheroma plaques in the {region}.",
        "Calcific atherosclerotic changes are present in the wall of the {region}.",
        "Aortic wall calcification was detected in the {region}.",
    ),
    "Coronary artery wall calcification": (
        "Coronary artery calcification is seen in the {vessels}.",
        "Coronary calcifications were observed along the course of the {vessels}.",
        "There is {extent} coronary artery wall calcification involving the {vessels}.",
        "Calcific plaques are present in the coronary arteries, in the {vessels}.",
        "{Extent} coronary artery calcification was detected in the {vessels}.",
    ),
    "Hiatal hernia": (
        "A {extent} hiatal hernia measuring {size} mm is seen behind the heart.",
        "A hiatal hernia was observed, with part of the stomach above the diaphragm.",
        "There is a {size} mm hiatal hernia containing air and fluid.",
        "A sliding hiatal hernia is present in the retrocardiac area.",
        "{Extent} hiatal hernia was detected.",
    ),
    "Lymphadenopathy": (
        "Enlarged lymph nodes are seen in the {stations} region, the largest with a short axis of {size} mm.",
        "Lymphadenopathy was observed at the {stations} stations, measuring up to {size} mm.",
        "There are pathologically enlarged lymph nodes at the {stations} stations, up to {size} mm in short axis.",
        "Lymphadenopathy is present ({stations}), the largest node measuring {size} mm.",
        "Enlarged lymph nodes reaching {size} mm were detected in the {stations} area.",
    ),
    "Medical material": (
        "{Device} {is} seen.",
        "{Device} {was} observed in the thorax.",
        "There {is} {device} in place.",
        "{Device} {was} detected.",
        "{Device} {is} noted as medical material in the chest.",
    ),
}

# Normal sentences for absent findings (label → options); None in a tuple means "say nothing", as real reports
# often do for devices and calcifications.
NEGATIVE: dict[str, tuple[str | None, ...]] = {
    "Cardiomegaly": ("Heart contour and size are normal.", "The heart is of normal size.",
                     "Cardiac size is within normal limits.", "Heart size is normal.",
                     "The cardiac silhouette is normal in size."),
    "Arterial wall calcification": (None, None, "No calcified plaque is seen in the aortic wall.",
                                    "The aortic wall shows no calcification."),
    "Pericardial effusion": ("No pericardial effusion was detected.", "Pericardial effusion was not observed.",
                             "There is no pericardial effusion.", "The pericardium is unremarkable, without effusion.",
                             "No pericardial effusion is seen."),
    "Coronary artery wall calcification": (None, None, "No coronary artery calcification was detected.",
                                           "The coronary arteries show no calcification."),
    "Hiatal hernia": (None, "No hiatal hernia is seen.", "No hiatal hernia was detected."),
    "Lymphadenopathy": ("No enlarged lymph nodes were detected in the mediastinal or hilar stations.",
                        "No lymphadenopathy was observed in the mediastinum or hila.",
                        "Mediastinal and hilar lymph nodes are not enlarged.",
                        "No pathologically enlarged mediastinal or hilar lymph node is seen.",
                        "Lymph nodes in the mediastinum and hila are of normal size."),
    "Medical material": (None,),
    "Emphysema": (None, "No emphysema is seen.", "There is no emphysema in either lung."),
    "Atelectasis": (None, "No atelectasis is seen.", "No atelectasis was detected."),
    "Lung nodule": ("No nodule or mass was detected in either lung.", "No pulmonary nodule is seen.",
                    "No suspicious nodular lesion was observed in the lung parenchyma.", "There is no lung nodule.",
                    "Neither lung contains a nodule or mass."),
    "Lung opacity": (None, "No ground-glass opacity is seen.", "No ground-glass opacity was detected."),
    "Pulmonary fibrotic sequela": (None, None, "No fibrotic sequelae are seen."),
    "Pleural effusion": ("No pleural effusion is seen.", "Pleural spaces are clear, with no effusion.",
                         "Pleural effusion was not detected.", "There is no pleural effusion.",
                         "No pleural effusion was observed on either side."),
    "Mosaic attenuation pattern": (None, None, "No mosaic attenuation pattern is seen."),
    "Peribronchial thickening": (None, None, "No peribronchial thickening is seen."),
    "Consolidation": (None, "No consolidation is seen.", "No consolidation was detected in either lung."),
    "Bronchiectasis": (None, None, "No bronchiectasis is seen."),
    "Interlobular septal thickening": (None, None, "No interlobular septal thickening is seen."),
}

# Report sections in CT-RATE's usual order: label-free normal sentences and the labels reported there.
SECTIONS: tuple[tuple[Templates, tuple[str, ...]], ...] = (
    (("Trachea and both main bronchi are patent.", "The trachea and main bronchi are open.",
      "Trachea and main bronchi are in the midline and patent."), ("Medical material",)),
    (("Mediastinal great vessels have normal calibre.", "The mediastinal vascular structures are normal.",
      "The thoracic aorta has a normal diameter."),
     ("Cardiomegaly", "Pericardial effusion", "Arterial wall calcification", "Coronary artery wall calcification")),
    (("The thoracic esophagus has a normal calibre.", "The esophagus shows no wall thickening."),
     ("Hiatal hernia", "Lymphadenopathy")),
    (("The lung parenchyma was evaluated in the lung window.", "Lungs were examined in the parenchymal window."),
     ("Emphysema", "Lung nodule", "Consolidation", "Lung opacity", "Atelectasis", "Pulmonary fibrotic sequela",
      "Mosaic attenuation pattern", "Interlobular septal thickening", "Bronchiectasis", "Peribronchial thickening",
      "Pleural effusion")),
    (("Upper abdominal organs within the scan range are unremarkable.", "The imaged upper abdomen is normal."), ()),
    (("Bony structures of the thorax are normal.", "The vertebrae show preserved heights.",
      "No destructive bone lesion is seen."), ()),
)

IMPRESSION: dict[str, str] = {
    "Lung nodule": "{Side} {lobe} lobe nodule, {size} mm.", "Pleural effusion": "{Side} pleural effusion.",
    "Consolidation": "Consolidation in the {side} {lobe} lobe.", "Atelectasis": "Atelectasis in {loc}.",
    "Lung opacity": "Ground-glass opacities in {loc}.", "Emphysema": "{Extent} emphysema.",
    "Pulmonary fibrotic sequela": "Fibrotic sequelae in {loc}.",
    "Mosaic attenuation pattern": "Mosaic attenuation pattern.",
    "Peribronchial thickening": "Peribronchial thickening.", "Bronchiectasis": "Bronchiectasis in {loc}.",
    "Interlobular septal thickening": "Interlobular septal thickening.", "Cardiomegaly": "Cardiomegaly.",
    "Pericardial effusion": "Pericardial effusion.", "Arterial wall calcification": "Aortic atherosclerosis.",
    "Coronary artery wall calcification": "Coronary artery calcification.", "Hiatal hernia": "Hiatal hernia.",
    "Lymphadenopathy": "Lymphadenopathy ({stations}).", "Medical material": "{Device}.",
}
NORMAL_IMPRESSION = ("Chest CT within normal limits.", "No significant thoracic pathology.",
                     "Normal chest CT examination.")

DEVICE_PHRASE = {"port catheter": "a {side}-sided port catheter", "central venous catheter":
                 "a {side} jugular central venous catheter", "pacemaker": "a {side}-sided pacemaker with its lead",
                 "sternotomy wires": "sternotomy wires"}


def _loc(f: Finding) -> str:
    """Where a finding is, always carrying its side word: 'the right lower lobe', 'the bilateral lower lobes'."""
    lobe_part = (f.lobe or "").split(" ", 1)[-1] if f.lobe and f.side != "bilateral" else None
    if f.side == "bilateral":
        if f.lobe and "lobe" in f.lobe:
            return f"the bilateral {f.lobe}"
        return "both lungs, bilaterally"
    if lobe_part and "lobe" in lobe_part:
        return f"the {f.side} {lobe_part}"
    return f"the {f.side} lung"


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _fields(f: Finding) -> dict[str, str]:
    """Template fields for a finding; capitalised twins ({Side}) are added for sentence starts."""
    lobe = f.lobe.split()[1] if f.lobe and f.lobe.count(" ") == 2 else ""
    names = (f.region or "").split(", ")
    vessel_text = _join(names) + (" arteries" if len(names) > 1 else " artery")
    device = f.params.get("device", "")
    plural = device == "sternotomy wires"
    fields = {
        "side": f.side or "", "lobe": lobe, "loc": _loc(f) if f.side else "",
        "size": f"{f.size_mm:.0f}" if f.size_mm is not None else "", "extent": f.extent or "",
        "amount": {"few": "a few"}.get(f.extent or "", f.extent or ""), "region": f.region or "",
        "vessels": vessel_text, "stations": _join((f.region or "").split(", ")),
        "device": DEVICE_PHRASE.get(device, "").format(side=f.params.get("side") or ""),
        "is": "are" if plural else "is", "was": "were" if plural else "was",
    }
    fields.update({k.capitalize(): v[:1].upper() + v[1:] for k, v in list(fields.items())})
    return fields


def finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    """One self-contained sentence stating the finding and its attributes."""
    return str(rng.choice(POSITIVE[f.label])).format(**_fields(f))


def write_report(case: Case, rng: np.random.Generator) -> tuple[str, str, dict[str, str]]:
    """(Findings_EN, Impressions_EN, {label: sentence}) for ``case``; phrasing drawn from ``rng``."""
    by_label = {f.label: f for f in case.findings}
    sentences = {f.label: finding_sentence(f, rng) for f in case.findings}
    out: list[str] = []
    for normal, labels in SECTIONS:
        out.append(str(rng.choice(normal)))
        for label in labels:
            if label in by_label:
                out.append(sentences[label])
            else:
                neg = NEGATIVE[label][int(rng.integers(len(NEGATIVE[label])))]
                if neg:
                    out.append(neg)
    impression = " ".join(IMPRESSION[f.label].format(**_fields(f)) for f in case.findings)
    return " ".join(out), impression or str(rng.choice(NORMAL_IMPRESSION)), sentences
