"""A small MemoryAgentBench fixture in the exact official parquet schema (2 rows per split).

Written for these tests (not MAB data): contexts are synthetic but shaped like the real
sources (RULER-style documents are replaced by chat sessions, novel prose, labelled ICL
lines, ReDial-style dialogues, numbered facts), every context is over 2,000 characters as
MAB's ``ConversationCreator`` asserts, and unused metadata children are null.
The DetectiveQA answer format (an option letter) is an assumption.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "memoryagentbench_sources"
# ReDial entity ids of the movies the fixture's recommendation rows mention (as in ReDial's entity2id.json)
ENTITY2ID = {"<http://dbpedia.org/resource/Jaws_(film)>": 906, "<http://dbpedia.org/resource/Alien_(film)>": 13950,
             "<http://dbpedia.org/resource/Titanic_(1997_film)>": 7594,
             "<http://dbpedia.org/resource/Up_(2009_film)>": 14742, "<http://dbpedia.org/resource/The_Matrix>": 14398}

TURN = pa.struct([("content", pa.string()), ("has_answer", pa.bool_()), ("role", pa.string())])
METADATA = pa.struct([
    ("demo", pa.string()),
    ("haystack_sessions", pa.list_(pa.list_(pa.list_(TURN)))),
    ("keypoints", pa.list_(pa.string())),
    ("previous_events", pa.list_(pa.string())),
    ("qa_pair_ids", pa.list_(pa.string())),
    ("question_dates", pa.list_(pa.string())),
    ("question_ids", pa.list_(pa.string())),
    ("question_types", pa.list_(pa.string())),
    ("source", pa.string()),
])
SCHEMA = pa.schema([
    ("context", pa.string()),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.list_(pa.string()))),
    ("metadata", METADATA),
])
SPLITS = ("Accurate_Retrieval", "Test_Time_Learning", "Long_Range_Understanding", "Conflict_Resolution")


def _meta(source: str, **fields) -> dict:
    out = {name: None for name in METADATA.names}
    out.update(fields, source=source)
    return out


def _prose(seed_sentences: list[str], n_chars: int) -> str:
    out, i = [], 0
    while sum(len(s) + 1 for s in out) < n_chars:
        out.append(seed_sentences[i % len(seed_sentences)])
        i += 1
    return " ".join(out)


def _banking_lines(n: int) -> tuple[str, list[tuple[str, str]]]:
    path = SHARED / "banking77" / "train.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    cats = sorted({r["category"] for r in rows})
    label = {c: str((i * 37) % 77) for i, c in enumerate(cats)}  # a fixed, arbitrary label map
    picked = rows[: n * 40 : 40]
    lines = "".join(f"{r['text']} \n Label: {label[r['category']]} \n" for r in picked)
    tests = [(rows[1]["text"], label[rows[1]["category"]]), (rows[2000]["text"], label[rows[2000]["category"]])]
    return lines, tests


def rows_by_split() -> dict[str, list[dict]]:
    sessions = _prose([
        "User: I adopted a puppy named Target last spring and she loves the park.",
        "Assistant: That is lovely; puppies need plenty of exercise and short training sessions.",
        "User: My sister moved to Lisbon in March and I might visit her in the autumn.",
        "Assistant: Lisbon is beautiful in autumn; the trams are worth a ride.",
    ], 2600)
    novel = _prose([
        "The lamplighter crossed the square before the bells of Saint Aubin rang nine.",
        "Marguerite watched him from the inn window and counted the lamps as they woke.",
        "Her brother had promised to return with the letter before the mail coach left.",
        "When the coach finally arrived, the driver carried a parcel sealed with green wax.",
    ], 3200)
    icl_context, icl_tests = _banking_lines(80)
    dialogues = _prose([
        "User: I loved Jaws and anything with a tense ocean setting. System: You might enjoy Alien as well.",
        "User: My kids watched Frozen twice this week. System: Then Up could be a good family pick.",
        "User: I want a mind-bending thriller. System: Inception or The Matrix are classics.",
        "User: Something romantic and epic please. System: Titanic is hard to beat.",
    ], 2400)
    book = _prose([
        "Inspector Hale found the study locked from the inside and the fire still warm.",
        "The butler swore he had heard two voices arguing shortly after the clock struck ten.",
        "A torn railway ticket to Harwich lay beneath the writing desk.",
        "Miss Verity claimed she had spent the evening reading in the conservatory.",
    ], 3000)
    facts = []
    for i in range(60):
        facts.append(f"{i}. The town of Brenlow{i} lies in the province of Aldmere{i % 7}.")
    facts[12] = "12. The capital of Vestria is Gallin."
    facts[47] = "47. The capital of Vestria is Oderzo."
    facts[20] = "20. Paul Mendes plays the sport of tennis."
    facts[55] = "55. Paul Mendes plays the sport of cricket."
    fact_context = "\n".join(facts)
    mh_facts = list(facts)
    mh_facts[30] = "30. The head of state of Vestria is Ilona Varga."
    mh_facts[58] = "58. The head of state of Vestria is Teodor Brask."
    mh_context = "\n".join(mh_facts)

    def session(turns):
        return [{"content": c, "has_answer": h, "role": r} for r, c, h in turns]

    lme_hay = [
        [session([("user", "My puppy is called Target.", True), ("assistant", "What a fun name!", False)]),
         session([("user", "I like the park.", False), ("assistant", "Parks are great.", False)])],
        [session([("user", "My sister lives in Lisbon.", False), ("assistant", "Nice city.", False)]),
         session([("user", "I may visit in autumn.", False), ("assistant", "Enjoy!", False),
                  ("user", "Thanks.", False)])],
    ]
    return {
        "Accurate_Retrieval": [
            {"context": sessions,
             "questions": ["What is the name of my puppy?", "What is my sister's favourite film?"],
             "answers": [["Target"], ["The information provided is not enough to answer this question."]],
             "metadata": _meta("longmemeval_s*", question_ids=["q_0001", "q_0002_abs"],
                               question_types=["single-session-user", "knowledge-update"],
                               question_dates=["2023/05/30 (Tue) 23:40", "2023/06/02 (Fri) 10:05"],
                               haystack_sessions=lme_hay, qa_pair_ids=["longmemeval_0", "longmemeval_1"])},
            {"context": novel,
             "questions": ["These are the events that have already occurred:\n\n1. The lamplighter crossed the square.\n\n"
                           "Below is a list of possible subsequent events:\n1. Marguerite counted the lamps.\n"
                           "2. The inn burned down.\n3. A duel at dawn.\n4. The bells fell silent.\n"
                           "5. A storm broke.\n6. The mail coach left empty.",
                           "These are the events that have already occurred:\n\n1. Marguerite counted the lamps.\n\n"
                           "Below is a list of possible subsequent events:\n1. The driver carried a sealed parcel.\n"
                           "2. The brother drowned.\n3. The inn was sold.\n4. A wedding began.\n"
                           "5. The lamps went out.\n6. A thief escaped."],
             "answers": [["Marguerite counted the lamps."], ["The driver carried a sealed parcel."]],
             "metadata": _meta("eventqa_65536", previous_events=["1. The lamplighter crossed the square.",
                                                                 "1. Marguerite counted the lamps."],
                               qa_pair_ids=["eventqa_65536_0", "eventqa_65536_1"])},
        ],
        "Test_Time_Learning": [
            {"context": icl_context,
             "questions": [icl_tests[0][0], icl_tests[1][0]],
             "answers": [[icl_tests[0][1]], [icl_tests[1][1]]],
             "metadata": _meta("icl_banking77_5900shot_balance", qa_pair_ids=["icl_0", "icl_1"])},
            {"context": dialogues,
             "questions": ["User: I want a scary classic about a shark or a monster. System:",
                           "User: Recommend an epic romance. System:"],
             "answers": [["906", "13950"], ["7594"]],
             "metadata": _meta("recsys_redial_full", qa_pair_ids=["recsys_0", "recsys_1"])},
        ],
        "Long_Range_Understanding": [
            {"context": novel,
             "questions": ["Summarize the book in a few sentences."],
             "answers": [["Marguerite waits at the inn while the lamplighter works; her brother's letter arrives "
                          "with the mail coach in a parcel sealed with green wax."]],
             "metadata": _meta("infbench_sum_eng_shots2",
                               demo="For example:\n\n[story text]\nSummary: A short summary.\n\nNow, read the following story:\n\n",
                               keypoints=["Marguerite waits at the inn", "the lamplighter lights the lamps",
                                          "the letter arrives sealed with green wax"],
                               qa_pair_ids=["infbench_sum_eng_shots2_0"])},
            {"context": book,
             "questions": ["Where was the railway ticket going? A. London B. Harwich C. Dover D. York",
                           "Where did Miss Verity say she was? A. Study B. Kitchen C. Garden D. Conservatory"],
             "answers": [["B"], ["D"]],
             "metadata": _meta("detective_qa", qa_pair_ids=["detective_0", "detective_1"])},
        ],
        "Conflict_Resolution": [
            {"context": fact_context,
             "questions": ["What is the capital of Vestria?", "Which sport does Paul Mendes play?"],
             "answers": [["Oderzo"], ["cricket", "Cricket (sport)"]],
             "metadata": _meta("factconsolidation_sh_6k", qa_pair_ids=["fc_sh_0", "fc_sh_1"])},
            {"context": mh_context,
             "questions": ["Who is the head of state of the country whose capital is Oderzo?",
                           "What is the capital of the country led by Teodor Brask?"],
             "answers": [["Teodor Brask"], ["Oderzo"]],
             "metadata": _meta("factconsolidation_mh_6k", qa_pair_ids=["fc_mh_0", "fc_mh_1"])},
        ],
    }


def write_fixture(root: Path, rows: dict[str, list[dict]] | None = None, schema: pa.Schema = SCHEMA) -> Path:
    """Write ``root/data/<Split>-00000-of-00001.parquet`` for every split; returns ``root``."""
    rows = rows or rows_by_split()
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        table = pa.Table.from_pylist(split_rows, schema=schema)
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
    return root
