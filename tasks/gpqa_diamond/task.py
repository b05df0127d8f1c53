"""GPQA-Diamond: 198 graduate-level multiple-choice questions (Rein et al., 2023).

Data: ``gpqa_diamond.csv`` read from the password-protected ``dataset.zip`` as distributed,
decrypted in memory only. The authors ask that the questions never appear in plain text
online, so ``record_questions`` is False: records keep the record id, the shuffled gold
letter, the extracted letters and the model output with every echo of a question or option
withheld (:mod:`tasks.gpqa_diamond.withhold`), never the question or option texts.

Protocols (``task.protocol``):

* ``generative`` (default, the δ-mem reference suite): options shuffled per question by
  ``random.Random(int(md5(f"{record_id}:{seed}")[:8], 16))`` over [correct, incorrect 1-3],
  labelled A-D; a JSON-answer prompt; greedy decoding; accuracy of the extracted letter. Every
  sample is scored by the three rules of :mod:`tasks.gpqa_diamond.extract` (``accuracy_strict``,
  ``accuracy_reference``, ``accuracy_lm_eval``, and each rule's letter in ``extracted_by``);
  ``task.scoring`` picks the one that is ``accuracy``, the primary metric (default ``strict``).
* ``loglik_mc``: lm-eval's ``gpqa_diamond_zeroshot`` prompt scored by the log-likelihood of
  " (A)" … " (D)" after it (acc; acc_norm is identical because the four continuations have
  the same byte length). Methods only generate text, so this protocol runs through the
  method-independent helper ``python -m tasks.gpqa_diamond.loglik`` (see that module); a
  text-generating method given this protocol is refused at scoring time. Options use the
  same md5-seeded order (lm-eval shuffles with the unseeded global ``random``).

The shuffle seed is the run seed unless ``task.shuffle_seed`` fixes it.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.types import Episode, Query, Score
from tasks.base import Task
from tasks.data_location import locate, where_to_put
from tasks.gpqa_diamond.extract import RULES, extract_all
from tasks.gpqa_diamond.extract import extract_reference as extract_letter  # noqa: F401  (the former name)
from tasks.gpqa_diamond.withhold import Withholder
from tasks.hub import HubSource, hub_fingerprint, is_hub_uri, load_hub_dataset, parse_hub_uri
from tasks.qa_metrics import fill_template

DEFAULT_ZIP = Path("gpqa") / "dataset.zip"
PACKAGED = Path(__file__).parent / "data" / "dataset.zip"  # as its authors distribute it (CC BY 4.0)
HUB = {"name": "gpqa_diamond", "split": "train"}  # defaults of an hf://Idavidrein/gpqa data_path
MEMBER = "dataset/gpqa_diamond.csv"
LETTERS = "ABCD"
PROTOCOLS = ("generative", "loglik_mc")
EPISODE_ID = "gpqa_diamond"
REQUIRED = ("Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
            "Incorrect Answer 3", "High-level domain", "Subdomain")


def option_order(record_id: str, seed: int) -> list[int]:
    """The reference's deterministic shuffle of [correct, incorrect 1, 2, 3] (indices)."""
    order = list(range(4))
    random.Random(int(hashlib.md5(f"{record_id}:{seed}".encode()).hexdigest()[:8], 16)).shuffle(order)
    return order


def shuffle_options(record_id: str, seed: int, correct: str, incorrect: list[str]) -> tuple[list[str], str]:
    """Option texts (stripped) in the shuffled order, and the gold letter."""
    raw = [correct] + list(incorrect)
    order = option_order(record_id, seed)
    return [raw[i].strip() for i in order], LETTERS[order.index(0)]


def lm_eval_preprocess(text: str | None) -> str:
    """lm-eval's GPQA option clean-up (gpqa/zeroshot/utils.py): strip, " [title]" -> ". ", double spaces."""
    if text is None:
        return " "
    return text.strip().replace(" [title]", ". ").replace("  ", " ")


_LOGLIK_PREDICTION = re.compile(r"^\(([ABCD])\)$")


# ------------------------------------------------------------------ loading
def read_encrypted_csv(zip_path: Path, member: str, password: str) -> list[dict[str, str]]:
    """Rows of one CSV inside the encrypted zip, decrypted in memory (nothing touches disk)."""
    if not zip_path.is_file():
        raise DataError(zip_path, "GPQA dataset.zip not found (" + where_to_put("gpqa_diamond", "data_path", "HARNESS_GPQA", DEFAULT_ZIP) + ")")
    try:
        with zipfile.ZipFile(zip_path) as z:
            if member not in z.namelist():
                raise DataError(zip_path, f"no member {member!r}; members: {[n for n in z.namelist() if n.endswith('.csv')]}")
            raw = z.read(member, pwd=password.encode())
    except RuntimeError as exc:  # zipfile raises RuntimeError("Bad password for file ...")
        raise DataError(zip_path, f"cannot decrypt {member}: {exc} (check task.password_file / HARNESS_GPQA_PASSWORD)") from exc
    except (zipfile.BadZipFile, zlib.error) as exc:
        if not zipfile.is_zipfile(zip_path):
            raise DataError(zip_path, f"not a zip file ({exc})") from exc
        # ZipCrypto's check byte passes one wrong password in 256; the data then fails to inflate or its CRC
        raise DataError(zip_path, f"cannot decrypt {member}: the password passed the zip's check byte but the data "
                                  f"did not decompress ({exc}); the password is wrong (check task.password_file / "
                                  "HARNESS_GPQA_PASSWORD)") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(zip_path, f"{member} is not UTF-8 text after decryption ({exc}); the password is probably wrong "
                                  "(check task.password_file / HARNESS_GPQA_PASSWORD)") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(zip_path, f"{member}: missing columns {missing}")
    return list(reader)


def hub_gpqa(source: HubSource) -> list[dict[str, Any]]:
    """Rows from the gated ``Idavidrein/gpqa`` dataset (config ``gpqa_diamond``, split ``train``: the same
    columns as the CSV in the zip); they stay in memory like the decrypted CSV."""
    ds = load_hub_dataset(source)
    missing = [c for c in REQUIRED if c not in (ds.column_names or [])]
    if missing:
        raise DataError(source.uri, f"missing columns {missing}")
    return [{k: ("" if v is None else str(v)) for k, v in dict(row).items()} for row in ds]


class GPQADiamondTask(Task):
    name = "gpqa_diamond"
    primary_metric = "accuracy"
    record_questions = False
    scorer_version = 2  # 2: three named extraction rules, strict by default; outputs withheld
    table_metrics = (("accuracy_strict", "accuracy, letters read by the strict rule (an option list is no answer)"),
                     ("accuracy_reference", "accuracy, letters read by the δ-mem reference suite's cascade"))

    def __init__(self, *, data_path: str | None = None, member: str = MEMBER, password_file: str | None = None,
                 protocol: str = "generative", shuffle_seed: int | None = None, loglik_chat_template: bool = False,
                 scoring: str = "strict", prompts: dict[str, str] | None = None, **kw: Any):
        super().__init__(**kw)
        if protocol not in PROTOCOLS:
            raise ValueError(f"task.protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if scoring not in RULES:
            raise ValueError(f"task.scoring must be one of {RULES}, got {scoring!r}")
        self.scoring = scoring
        self._withholder: Withholder | None = None
        prompts = dict(prompts or {})
        missing = [k for k in ("generative", "option", "loglik", "loglik_choice") if k not in prompts]
        if missing:
            raise ValueError(f"task.prompts is missing {missing}")
        where = locate(data_path, "HARNESS_GPQA", DEFAULT_ZIP, packaged=PACKAGED, hub="hf://Idavidrein/gpqa")
        self.hub = parse_hub_uri(where, **HUB) if is_hub_uri(where) else None
        self.path = Path(where).expanduser()
        self._rows: list[dict[str, str]] | None = None
        self.member = member
        self.password_file = Path(password_file).expanduser() if password_file else self.path.parent / "PASSWORD"
        self.protocol, self.shuffle_seed, self.prompts = protocol, shuffle_seed, prompts
        self.loglik_chat_template = bool(loglik_chat_template)
        self._seed = shuffle_seed if shuffle_seed is not None else 0

    def _password(self) -> str:
        env = os.environ.get("HARNESS_GPQA_PASSWORD")
        if env:
            return env
        if not self.password_file.is_file():
            raise DataError(self.password_file, "GPQA password file not found (set task.password_file or HARNESS_GPQA_PASSWORD)")
        return self.password_file.read_text().strip()

    # ------------------------------------------------------------------ data
    def episodes(self, seed: int) -> list[Episode]:
        self._seed = self.shuffle_seed if self.shuffle_seed is not None else seed
        return super().episodes(seed)

    def rows(self) -> list[dict[str, str]]:
        if self._rows is None:
            if self.hub:
                self._rows = hub_gpqa(self.hub)
            elif not self.path.is_file():
                raise DataError(self.path, "GPQA dataset.zip not found (" + where_to_put("gpqa_diamond", "data_path", "HARNESS_GPQA", DEFAULT_ZIP) + ")")
            else:
                self._rows = read_encrypted_csv(self.path, self.member, self._password())
        return self._rows

    def load_episodes(self) -> list[Episode]:
        rows = self.rows()
        source = self.hub.uri if self.hub else self.path
        queries, seen = [], set()
        for i, row in enumerate(rows):
            where = (f"row {i}" if self.hub else f"{self.member} row {i + 1}") + f" (Record ID {row.get('Record ID')!r})"
            for col in REQUIRED:
                if not (row.get(col) or "").strip():
                    raise DataError(source, f"{where}: empty field {col!r}")
            rid = row["Record ID"].strip()
            if rid in seen:
                raise DataError(source, f"{where}: duplicate Record ID")
            seen.add(rid)
            raw = [row["Correct Answer"]] + [row[f"Incorrect Answer {k}"] for k in (1, 2, 3)]
            order = option_order(rid, self._seed)
            options = [raw[k].strip() for k in order]
            lm_opts = [lm_eval_preprocess(raw[k]) for k in order]
            gold = LETTERS[order.index(0)]
            queries.append(Query(id=f"{EPISODE_ID}/{rid}", question=row["Question"], gold=gold,
                                 category=row["High-level domain"].strip(),
                                 metadata={"record_id": rid, "options": options, "loglik_options": lm_opts,
                                           "subdomain": row["Subdomain"].strip()}))
        return [Episode(id=EPISODE_ID, units=(), queries=tuple(queries), metadata={"shuffle_seed": self._seed})]

    def data_fingerprint(self) -> dict[str, Any]:
        if self.hub:  # a checksum of the rows: nothing of them is written
            return {**hub_fingerprint(self.hub, self.rows()), "shuffle_seed": self._seed}
        # The checksum is of the encrypted zip as distributed; the plain CSV is never hashed to disk.
        return {"path": str(self.path), "member": self.member,
                "zip_sha256": hashlib.sha256(self.path.read_bytes()).hexdigest(), "shuffle_seed": self._seed}

    # --------------------------------------------------------------- prompts
    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        if self.protocol == "loglik_mc":
            content = self.loglik_context(query)
        else:
            opts = "\n".join(fill_template(self.prompts["option"], letter=L, text=o)
                             for L, o in zip(LETTERS, query.metadata["options"]))
            content = fill_template(self.prompts["generative"], question=query.question.strip(), options=opts)
        if context:
            content = f"{context}\n\n{content}"
        return [{"role": "user", "content": content}]

    def loglik_context(self, query: Query) -> str:
        fields = {f"choice{k + 1}": o for k, o in enumerate(query.metadata["loglik_options"])}
        return fill_template(self.prompts["loglik"], question=query.question, **fields)

    def loglik_continuations(self) -> list[str]:
        return [fill_template(self.prompts["loglik_choice"], letter=L) for L in LETTERS]

    def runner_problem(self, method_target: str) -> str | None:
        if self.protocol == "loglik_mc" and method_target != "tasks.gpqa_diamond.loglik.LoglikMC":
            return ("gpqa_diamond: protocol=loglik_mc scores the log-likelihoods of the four options, which text-"
                    "generating methods do not give; run it with `python -m tasks.gpqa_diamond.loglik`")
        return None

    def public_gold(self, query: Query):
        return query.gold  # the shuffled gold letter only

    # --------------------------------------------------------------- scoring
    def score(self, query: Query, prediction: str) -> Score:
        return self.score_batch([query], [prediction])[0]

    def score_batch(self, queries, predictions) -> list[Score]:
        if self.protocol == "loglik_mc":
            out = []
            for q, p in zip(queries, predictions):
                m = _LOGLIK_PREDICTION.match(str(p).strip())
                if not m:
                    raise ValueError("gpqa_diamond: protocol=loglik_mc scores log-likelihoods; run it with "
                                     "`python -m tasks.gpqa_diamond.loglik` (a text-generating method returned "
                                     f"{self.withhold(str(p)[:40])!r})")
                out.append(Score(values={"accuracy": float(m.group(1) == q.gold)}, extracted=m.group(1)))
            return out
        letters = extract_all(predictions, [q.metadata["options"] for q in queries])
        scores = []
        for q, by_rule in zip(queries, letters):
            values = {f"accuracy_{rule}": float(letter == q.gold) for rule, letter in by_rule.items()}
            values["accuracy"] = values[f"accuracy_{self.scoring}"]
            scores.append(Score(values=values, extracted=by_rule[self.scoring], extracted_by=by_rule))
        return scores

    def withhold(self, value: Any) -> Any:
        if self._withholder is None:
            texts = [row[c] for row in self.rows() for c in REQUIRED[1:6]]
            self._withholder = Withholder(texts + [lm_eval_preprocess(t) for t in texts])
        return self._withholder.redact_tree(value)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "protocol": self.protocol, "scoring": self.scoring, "shuffle_seed": self._seed,
                "loglik_chat_template": self.loglik_chat_template}
