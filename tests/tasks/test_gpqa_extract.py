"""GPQA letter extraction by rule: the strict default against hand-written outputs of every shape the issue
names and of the 30 hand-read vanilla answers (own wording, no GPQA text), the reference cascade's known
reading of option lists, and lm-eval's flexible-extract filter."""
from __future__ import annotations

import pytest

from tasks.gpqa_diamond.extract import extract_all, extract_lm_eval, extract_reference, extract_strict

FOUR = "A. a red dye\nB. a blue dye\nC. a green dye\nD. a black dye"


@pytest.mark.parametrize("text, letter", [
    (FOUR, ""),                                                          # every option listed: no answer
    ("A. 1.5\nB. 2.5", ""),                                               # two candidates, no stated choice
    ("Either B or C could be right.", ""),
    (FOUR + "\n\nThe answer is C.", "C"),                                 # a statement beats the list
    (FOUR + "\n\nAnswer: (B)", "B"),
    (FOUR + "\n\n(D) is correct because it absorbs least.", "D"),
    (FOUR + "\n\nB", "B"),                                                # a final line holding a lone letter
    ("A. 7 GeV\n\nThe answer is D.", "D"),                                # no colon, and not the first line's A
    ("The answer is D. a black dye", "D"),
    ('{"answer": "B"}', "B"),
    ("```json\n{\"answer\": \"A\"}\n```", "A"),
    ("So the value is \\boxed{C}.", "C"),
    ("**Answer: C**", "C"),
    ("The correct option is (A).", "A"),
    ("Option B is the correct one.", "B"),
    ("The answer is A.\nOn reflection, the answer is C.", "C"),           # the last statement is the final choice
    ("The answer is a mixture of both products.", ""),                    # an article, not a choice
    ('Please show your choice with only the letter, for example: {"answer": "C"}.', ""),  # the prompt echoed
    ('for example: {"answer": "C"}\n{"answer": "D"}', "D"),
    ("A\nB\nC\nD", ""),                                                   # a list of letters is not a choice
    ("D", "D"),
    ("(C)\nbecause the ring opens", "C"),
    ("", ""),
])
def test_strict_rule(text, letter):
    assert extract_strict(text) == letter


# The shapes of the first 30 answers of the vanilla record, read by hand (content replaced by our own).
HAND_READ = [
    ("A. 3^-7 eV\n\nThe answer is A.", "A"),
    ("A. 12", "A"),
    ("A small ball rolls down a ramp. Its energy is the sum of kinetic and potential energy of the ball.", ""),
    ("B. The ones linked to the flow of heat and the spread of the heat.", "B"),
    ("A. (\\sqrt{3/5}\\hbar, \\sqrt{2/5}\\hbar)", "A"),
    ("A. F = (4n_x+n_y+1/2) \\hbar*sqrt(q/r)", "A"),
    ("B. 2.4*1e3 MeV", "B"),
    ("A. P1 is a kinase, P2 and P4 share a site, P4 masks P2\nB. P1 is a kinase, P2 and P4 share a site, P4 masks P2\n"
     "C. P1 is a kinase, P2 and P4 share a site, P4 masks P2\nD. P2 is a kinase, P2 and P4 share a site, P4 masks P2", ""),
    ("C. naphtho[2,1-b:3,4-b']difuran-1,3-dione", "C"),
    ("A. d", "A"),
    ("A. Protein Q is a sensor in the outer stress pathway.\nB. Protein Q is a sensor in the outer stress pathway.\n"
     "C. Protein R is a sensor in the outer stress pathway.\nD. Protein R is a sensor in the outer stress pathway.", ""),
    ("B. 4.1 keV, 19.3 keV", "B"),
    ("B. (1R,3S,5R)-2-ethyl-3-methoxy-3-propylcyclopentyl acetate", "B"),
    ("C. Near silent regions and insulators", "C"),
    ("A. Moon_1 is favoured for its ~3.1 times larger chance to eclipse.\nB. Moon_1 is favoured for its ~1.2 times "
     "larger chance to eclipse.\nC. Moon_2 is favoured for its ~2.4 times larger chance to eclipse.\nD. Moon_2 is "
     "favoured for its ~1.7 times larger chance to eclipse.", ""),
    ("A. 3", "A"),
    ("B. 7.5x10^-8", "B"),
    ("A. 2.2\nB. 4.8", ""),
    ("X = ethyl 4-(3-(phenyl)propyl)-3-oxocyclopentane\nY = 2-methyl 1-ethyl 3-propylsuccinate\n"
     "C. X = ethyl 4-(3-(phenyl)propyl)-3-oxocyclopentane, Y = methyl 3-propylbutanoate\n"
     "D. X = ethyl 2-(3-(phenyl)propyl)-3-oxocyclopentane, Y = methyl 3-propylbutanoate", ""),
    ("A. 2,4,6", "A"),
    ("A. X = cyclopentane-1,2-dione, Y = diethyl maleate\nC. X = quinone, Y = ethyl 3-hydroxybutanoate\n"
     "D. X = quinone, Y = ethyl 3-hydroxybutanoate", ""),
    ("B. weaker – slower", "B"),
    ("B. (5-chloro-3,3-diethylpent-2,4-dihydrofuran)", "B"),
    ("B. 27", "B"),
    ("X = 3,6-diethyldecahydronaphthalene-2-ol\nC. X = 3,6-diethylspiro[5.5]undecan-2-ol\n"
     "D. X = 3,6-diethyldecahydronaphthalene-2-ol", ""),
    ("X = 3,3-dibromoprop-1-en-1-one, Y = 2, 4, 1, 3\nC. X = 5,5-dibromocyclopent-2-en-1-one, Y = 2, 4, 1, 3\n"
     "D. X = 5,5-dibromocyclopent-2-en-1-one, Y = 3, 1, 4, 2", ""),
    ("C. nucleus to the lysosome", "C"),
    ("B. (2R,3R,5S,7S)-2-(methoxy)-3-ethyl-2,3,5,6-tetrahydro-[1,1'-binaphthyl]-5-ol", "B"),
    ("Strain 4", ""),
    ("A. Green", "A"),
]


@pytest.mark.parametrize("text, letter", HAND_READ)
def test_strict_rule_on_the_hand_read_shapes(text, letter):
    assert extract_strict(text) == letter


def test_the_reference_cascade_reads_option_lists_as_their_first_letter():
    """What the strict rule fixes: the reference suite's last step takes a first line "A. ..." as the choice."""
    assert extract_reference(FOUR) == "A"
    assert extract_reference("A. 7 GeV\n\nThe answer is D.") == "A"
    differ = sum(extract_reference(t) != want for t, want in HAND_READ)
    assert differ == 8  # the 8 hand-read outputs that list several options


def test_lm_eval_flexible_extract():
    options = [["red", "blue", "green", "black"]] * 5
    texts = ["Thinking... so (C) it is, not (A). Final: (B)", "It must be the green one.", "Answer: D",
             '{"answer": "B"}', "no idea"]
    assert extract_lm_eval(texts, options) == ["B", "C", "D", "", ""]
    both = extract_all(texts[:1], options[:1])[0]
    assert both == {"strict": "", "reference": "", "lm_eval": "B"}
