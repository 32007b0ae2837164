"""Context patterns shared by several concepts: organs outside the lung, thoracic arteries, words that place a
clause in the lung, and what makes a lung "density" something other than an opacity."""

from __future__ import annotations

# Organs outside the lung whose nodules / masses / densities are not lung findings.
EXTRAPULMONARY = (
    r"thyroid|liver|hepatic|adrenal|kidney|renal|spleen|splenic|pancrea|breast|axilla|gallbladder|uterus|ovar"
    r"|adnex|bone|vertebra|\bribs?\b|sternum|skin|subcutaneous|soft tissue|muscle|lymph|gland|esophag|stomach|gastric"
    r"|bowel|colon|peritone|omentum|mesenter|intraabdominal|abdominal|pelvi|prostate|bladder|gynecomastia"
    r"|pleura(?:l)? (?:based )?(?:nodular )?thicken|myelom|chest wall|mediastin"
)

# Non-coronary, thoracic arterial locations (lookbehinds drop "coronary arteries", "abdominal aorta" and the
# abdominal / pelvic arteries).
ARTERY = (
    r"(?<!abdominal )aort(?!ic valve)|\barch\b|vascular structures|\bvessels?\b|carotid|subclavian|brachiocephalic"
    r"|supraaortic|thoracic|thoracoabdominal|vascular wall"
    r"|(?<!coronary )(?<!descending )(?<!circumflex )(?<!iliac )(?<!renal )(?<!femoral )(?<!mesenteric )"
    r"\barter(?:y|ies|ial)\b"
)

# Words placing a clause in the lung (generic "density" / "infiltration" elsewhere is not lung opacity).
LUNG = r"\blungs?\b|\blobes?\b|segment|parenchym|pulmonar|subpleural|lingul|\bbasal|\bapical|\bapex|peribronch|centri"
OPACITY_EXCLUDE = (
    EXTRAPULMONARY + r"|fat density|fatty|sequel|fibro|hepatosteat|pleuroparenchymal|pleural parenchymal"
    r"|soft tissue|water|fluid|material|stent|suture|calcific densit|bone|osteo|sclero|cyst"
    # Low-attenuation, air, fat, mucus or calcified "densities" are not parenchymal opacities.
    r"|low densit|air densit|fat densit|mucus|mucous|plug|calcified densit|metal"
)
# A density that the report itself calls (plain or subsegmental) atelectasis or a consolidation is that finding, not
# a separate opacity ("densities consistent with subsegmental atelectasis", "an increase in density is observed,
# which is compatible with the consolidation area"). Qualified attributions ("linear density consistent with band
# atelectasis or sequelae", "... with mild compressive atelectasis") were labelled opacity on develop: kept.
ATTRIBUTED_DENSITY = (
    r"\bdensit\w*(?: increases?)?(?: (?:is|are|was|were) (?:observed|seen|noted|detected))?,?"
    r" (?:which (?:is|are|was|were) )?(?:consistent with|compatible with|in favou?r of|in accordance with)"
    r" (?:the )?(?:(?:subsegment\w*|segmental|lobar|focal|small|large) )?(?:atelecta\w*|consolidat\w*)"
)
OPACITY_REJECT = (
    ATTRIBUTED_DENSITY,
    r"\bactive infiltrat\w*",
    r"\bpleuroparenchymal \w+ densit\w*",
    r"ground glass (?:\w+ )?nodul\w*",
    r"(?:broncho)?pneumonic infiltrat\w*",
    r"leukemic infiltrat\w*",
)
