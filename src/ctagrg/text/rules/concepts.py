"""Per-label concept patterns: the words and phrases by which CT reports mention each of the 18 abnormalities.

Patterns run on normalised text (lower case, hyphens and slashes as spaces; ``context.normalise``). Each
``Concept`` has:

- ``include``: mentions of the finding (synonyms, adjectives, Turkish-English translation variants);
- ``exclude``: clause-level context that makes a mention about something else (a *thyroid* nodule, a *lymph
  node* calcification), checked within ``window`` characters of the mention in the same clause;
- ``reject``: phrases that, when they overlap the mention, cancel it (e.g. "fibrocalcific atheroma");
- ``require``: context that must appear in the same sentence (generic words such as "density increase" only count
  as lung opacity when the sentence is about the lung).

How the CT-RATE annotators treat edge cases (read from the development part of the 800 dev reports):
"calcific plaques in the aorta" is arterial wall calcification; "emphysematous changes" is emphysema;
"sequelae changes" and "fibroatelectasis" are fibrotic sequelae; millimetric lung nodules and intrapulmonary
lymph nodes are lung nodules; lymph nodes described as present (even "not reaching pathological size") usually
count as lymphadenopathy, while "no pathologically enlarged lymph node" does not.
"""

from __future__ import annotations

from ctagrg.text.rules.concept import Concept
from ctagrg.text.rules.locations import ARTERY, EXTRAPULMONARY, LUNG, OPACITY_EXCLUDE, OPACITY_REJECT

CONCEPTS: tuple[Concept, ...] = (
    Concept(
        "Medical material",
        include=(
            r"\bcatheters?\b",
            r"\bport\b",
            r"\bstents?\b",
            r"pacemaker",
            r"\bpace maker",
            r"\bicd\b",
            r"defibrillator",
            r"\btubes?\b",
            r"\bsutures?\b",
            r"\bclips?\b",
            r"\bwires?\b",
            r"prosthe",
            r"\bdrains?\b",
            r"drainage",
            r"electrodes?",
            r"\bcannula",
            r"\bgraft",
            r"\bcoils?\b",
            r"surgical material",
            r"operation material",
            r"metallic",
            r"\bbreast implants?",
            r"\bfixators?\b",
            r"osteosynthe\w*",
            r"\b(?:cardiac|implant\w*|electronic|closure) devices?\b",
            r"\bimplants? (?:\w+ ){0,2}breast",
            r"\bscrews?\b",
            r"cerclage",
            r"\bleads?\b",
            r"\bvalve replacement",
            r"\bintubat",
            r"tracheostomy",
            r"\bpeg\b",
            r"\bfilter\b",
            r"\bexpander",
            r"\bshunt\b",
            r"\bmesh\b",
            r"\bsternotomy\b",
            r"\bfixation material",
            r"\bmarker\b",
        ),
        exclude=(r"contrast|bronchiectasis|nodule|osteo|end ?plate|pleural plate|thyroid",),
        reject=(
            r"portal",
            r"\bport(?:ion|al)",
            r"tubular",
            r"\bplates? (?:atelectasis|like)",
            r"\btubes? (?:of|shaped)",
            r"eustachian",
            r"\bbronchial tube",
            r"\bleads? to\b",
            r"\bleading\b",
        ),
        window=40,
    ),
    Concept(
        "Arterial wall calcification",
        # A location outside the coronaries is required: coronary-only plaques are the coronary label, and the
        # annotators did not count abdominal-aorta-only or aortic-valve calcification.
        include=(
            rf"(?:atheros|atherom|calcif|plaque)\w*(?: \w+){{0,14}}? (?:{ARTERY})",
            rf"(?:{ARTERY})\w*(?: \w+){{0,6}}? (?:atheros|atherom|calcif|plaque)",
        ),
        window=80,
    ),
    Concept(
        "Cardiomegaly",
        include=(
            r"cardiomegal",
            r"\bheart (?:size|dimensions?|volume|contour|diameter)s? (?:is |are |was |were )?(?:increased|enlarged)",
            r"increased? (?:in )?(?:the )?(?:heart|cardiac) (?:size|dimension|diameter|volume)",
            r"\benlarged heart",
            r"(?:cardiac|heart) enlargement",
            r"enlargement of (?:the )?heart",
            r"cardiothoracic (?:index|ratio) (?:\w+ ){0,3}increase",
            r"\bheart (?:is |was )?larger than normal",
            r"\bheart (?:sizes?|dimensions?) (?:\w+ ){0,3}(?:increased|enlarged)",
            r"\bcti (?:\w+ ){0,3}increase",
            r"\bheart (?:is |was )?enlarged",
            r"\bctr (?:increase|is increased)",
            r"cardiothoracic ratio (?:is )?increased",
            r"increase in (?:the )?cardiothoracic",
            r"increased cardiothoracic",
            r"cardiac (?:size|dimensions?) (?:is |are |has )?(?:increased|enlarged)",
        ),
    ),
    Concept(
        "Pericardial effusion",
        include=(
            r"pericardial (?:\w+ )?effusion",
            r"pericardial (?:fluid|thickening effusion|effusion thickening)",
            r"effusion (?:\w+ ){0,16}pericard",
            r"fluid (?:\w+ ){0,12}pericard",
            r"pericard\w* (?:\w+ ){0,3}(?:effusion|fluid)",
            r"pericardial (?:space|recess)\w* (?:\w+ ){0,4}fluid",
            r"\bpericardial thickening",
            r"hydropericard",
        ),
    ),
    Concept(
        "Coronary artery wall calcification",
        include=(r"\bcoronar\w*", r"\blad\b", r"\brca\b", r"circumflex"),
        require=(r"calcif|plaque|atheros|atherom",),
        reject=(r"coronary (?:sinus|vein)",),
    ),
    Concept(
        "Hiatal hernia",
        include=(
            r"hiat\w* hernia",
            r"hiatus hernia",
            r"hernia\w* (?:\w+ ){0,6}(?:hiatus|hiatal)",
            r"(?:hiatus|hiatal) (?:\w+ ){0,3}hernia",
            r"stomach (?:\w+ ){0,5}(?:herniat|hiatus)",
            r"\bhiatal (?:opening|enlargement)",
            r"(?:para ?)?(?:o)?esophageal hernia",
            r"\bsliding (?:type )?hernia",
            r"herniation of (?:the )?(?:stomach|gastric)",
        ),
    ),
    Concept(
        "Lymphadenopathy",
        include=(
            r"lymphadenopath",
            r"\blaps?\b",
            r"\blymph ?nodes?\b",
            r"\blymph node\w*",
            r"\badenopath",
            r"\blap\b",
            r"\blymphadenomegal",
        ),
        exclude=(
            r"intrapulmonary|intraparenchymal|subpleural lymph|perifissural|fissural|parenchymal lymph|abdominal"
            r"|mesenteric|inguinal|paraaortic|iliac|retroperitone|interaortocaval|paracaval|pelvi|colon|sigmoid|breast|\bmeso",
        ),
        window=30,
    ),
    # "centriacinar" alone describes nodules too; bullae alone were not counted by the annotators.
    Concept(
        "Emphysema",
        include=(r"emphysem\w*",),
        reject=(
            r"subcutaneous emphysem\w*",
            r"emphysem\w* (?:\w+ ){0,3}(?:under the skin|subcutaneous|soft tissue|mediastin)",
        ),
    ),
    Concept(
        "Atelectasis",
        include=(
            r"atelecta\w*",
            r"atelactas\w*",
            r"atelektas\w*",
            r"\bcollapse of the (?:\w+ ){0,3}lobe",
            r"\blobe collapse",
            r"\b(?:lobe|lung|segment)s? (?:is |are |was |were )?(?:\w+ )?collapsed",
        ),
        # The annotators file fibroatelectasis and band atelectasis under fibrotic sequelae only.
        reject=(
            r"\bfibro ?atel\w*",
            r"\bband (?:like )?atel\w*",
            r"\batelectasis\?",
            r"(?:sequel\w*|fibrotic) (?:of )?atelecta\w*",
        ),
    ),
    Concept(
        "Lung nodule",
        include=(
            r"\bnodul\w*",
            r"\bmicronodul\w*",
            r"(?:intrapulmonary|subpleural|perifissural|fissural|parenchymal) lymph node",
        ),
        exclude=(
            EXTRAPULMONARY.replace("|lymph", "")
            + r"|hypodense|hyperdense|schmorl|\bin the pleura\b|(?<!sub)pleural nodul"
            r"|colon|sigmoid|intestin|costal|accessory spleen",
        ),
        reject=(
            r"nodular (?:thicken|gynecomast|goit)",
            r"no mass effect",
            r"mass effect",
            r"muscle mass",
            r"\bnodular (?:ground glass|consolidat\w*|infiltrat|opacit)",
            r"nodular (?:\w+ )?calcific\w*",
            r"nodular (?:\w+ ){0,3}densit\w*",
            r"nodular configuration",
        ),
        window=80,
    ),
    # "Ground glass" and "crazy paving" describe lung parenchyma only: a neighbouring sequela, cyst or pleural
    # word does not make them something else. Bone words do: a ground glass bone matrix, or lung next to an
    # osteophyte.
    Concept(
        "Lung opacity",
        include=(r"ground glass", r"crazy paving"),
        exclude=(r"bone|osteo|\bribs?\b|vertebra|sternum|fibrous dysplasia",),
        reject=OPACITY_REJECT,
        window=40,
    ),
    Concept(
        "Lung opacity",
        include=(r"\bopacit\w*", r"\bhazy"),
        exclude=(OPACITY_EXCLUDE,),
        reject=OPACITY_REJECT,
        window=40,
    ),
    Concept(
        "Lung opacity",
        include=(
            r"\bdensity increase",
            r"\bincreased? (?:in )?density",
            r"\bincrease in (?:\w+ )?densit",
            r"\bdensities\b",
            r"\bdensity areas?",
            r"\balveolar (?:densit|opacit|infiltrat|pattern)",
            r"\bnodular densit",
        ),
        exclude=(OPACITY_EXCLUDE,),
        reject=OPACITY_REJECT,
        require=(LUNG,),
        window=40,
    ),
    # Honeycombing and plain "reticular" densities were not counted as sequelae by the annotators.
    Concept(
        "Pulmonary fibrotic sequela",
        include=(
            r"sequel\w*",
            r"\bfibros\w*",
            r"\bfibrotic",
            r"\bfibro ?atel\w*",
            r"parenchymal bands?",
            r"\bsubpleural bands?",
            r"\bscar\w*",
            r"\bcicatri\w*",
            r"\bfibrous",
            r"\bfibrocalcific",
            r"\bfibro\b",
            r"\bfibronodul\w*",
        ),
        exclude=(
            r"bone|humer|fracture|kidney|renal|liver|hepatic|breast|fibroadenoma|thyroid|spleen|atherom|plaque|adrenal"
            r"|vertebra|rib\b|clavic|pleural calcif|mediastin",
        ),
        window=50,
    ),
    # Mentions that name the pleura (or its fluid) themselves: only pericardial wording cancels them.
    Concept(
        "Pleural effusion",
        include=(
            r"pleural (?:\w+ )?effusion",
            r"hydrothorax",
            r"hydropneumothorax",
            r"hydropnomothorax",
            r"\bpleural (?:space|cavity|sinus)\w* (?:\w+ ){0,4}fluid",
            r"fluid (?:\w+ ){0,5}pleural",
            r"\bempyema",
            r"pleural fluid",
        ),
        reject=(r"pericardial (?:\w+ )?effusion", r"effusion (?:\w+ ){0,3}pericard"),
    ),
    # A bare "effusion" is pleural unless its clause places it in the pericardium, a joint or the abdomen.
    Concept(
        "Pleural effusion",
        include=(r"\beffusion\b",),
        exclude=(
            r"pericard|joint|subdeltoid|peritone|abdominal|pelvi|ascit|perirenal|perinephr|kidney|renal|spleen|liver"
            r"|subcapsular|gallbladder|perihepatic|perisplenic",
        ),
        reject=(r"pleural (?:\w+ )?effusion", r"pericardial (?:\w+ )?effusion", r"effusion (?:\w+ ){0,3}pericard"),
        window=200,
    ),
    Concept("Mosaic attenuation pattern", include=(r"mosaic",)),
    Concept(
        "Peribronchial thickening",
        include=(
            # Annotators counted "peribronchial" thickening, not plain "bronchial wall" thickening.
            r"peribronch\w* (?:\w+ ){0,3}thick\w*",
            r"\bperibronchial (?:cuffing|sheath)",
            r"thick\w* (?:of )?(?:the )?peribronch\w*",
        ),
    ),
    Concept(
        "Consolidation",
        include=(r"\bconsolidat\w*",),
        # Annotators filed "ground glass consolidations" under lung opacity only.
        reject=(r"ground glass (?:\w+ )?consolidat\w*", r"loss of consolidat\w*"),
    ),
    Concept(
        "Bronchiectasis",
        include=(
            r"bronchiectas\w*",
            r"bronchiectatic",
            r"bronchi\w* (?:\w+ ){0,2}(?:ectasi|dilat)\w*",
            r"(?:ectasi\w*|dilat\w*) (?:\w+ ){0,3}bronch",
            r"bronchiolectas",
        ),
        reject=(r"dilat\w* (?:of )?(?:the )?bronchial arter",),
    ),
    Concept(
        "Interlobular septal thickening",
        include=(
            r"septal thicken\w*",
            r"septal (?:\w+ ){0,2}thicken",
            r"interlobular (?:\w+ ){0,3}thick",
            r"\bsepta\w* (?:\w+ ){0,3}thick",
            r"thicken\w* (?:\w+ ){0,6}?(?:interlobular |intralobular )?septa",
            r"\binterstitial (?:\w+ )?thicken\w*",
            r"interlobular (?:\w+ ){0,2}lines?",
            r"\bseptal lines?",
            # "Prominent septa" ("septal clarification" in translation) describes thickened septa.
            r"(?:prominen\w*|clarification) (?:\w+ ){0,3}(?:interlobular )?septa",
            r"interlobular septa\w* (?:\w+ ){0,2}(?:prominen|clarification)",
            r"thicken\w* (?:\w+ ){0,6}interstiti",
        ),
    ),
)
