"""IterIT: complexity x diversity greedy selection, refreshed with the model being fine-tuned
(research/tshirt-iterit.md §3; reference-quirks.md §3.2).

`update` is SupervisedDataset.update: among the first `count` rows of the current order, rows with
IFD < 1 are candidates, rows with IFD >= 1 are set aside and NaN rows drop out (as in the
reference). Candidates' documents are their responses plus the EOS string, weighted by TF-IDF over
1-3-grams (sklearn defaults, L2-normalized rows). Each of `select_count` steps picks
argmax IFD_i x sum_j W_ij (the first maximum), then multiplies every column the pick uses by gamma
and zeroes the pick's entries. Row sums are kept incrementally (research PROPOSAL; identical up to
float rounding). The new order is: picks, the set-aside rows, the other candidates by IFD
descending, then rows past `count`.

Deviations, each behind a flag that restores the reference: a picked row cannot be picked again
(`mask_chosen`; with gamma = 0 or too small a pool the reference repeats rows), the IFD tail is a
stable sort (`stable_tail`; the reference's torch.argsort is not stable), and a pool of one
candidate works (the reference raises).

`IterITCallback` runs the schedule inside any transformers Trainer (TRL's included): before the
first epoch it scores every row (or takes precomputed scores) and selects n = floor(N x ratio);
before each later epoch it re-scores the first n x update_ratio rows of the current order with the
current model and selects again. The Trainer trains on `selection.view`, n rows that follow the
current selection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from pathlib import Path

import numpy as np
import polars as pl
import torch
from pydantic import Field

from curation_assets.methods.ifd import ITERIT_TEMPLATES, iterit_ifd, samples_of
from curation_assets.methods.plugin import Budget, Candidates, Column, Picked, ScoreMethod, Settings, Strategy, empty_gain, unpicked

VERSION = "1"


def greedy_order(
    scores: np.ndarray,
    documents: Sequence[str],
    order: Sequence[int],
    count: int,
    select_count: int,
    *,
    gamma: float = 0.1,
    score_type: str = "BOTH",
    mask_chosen: bool = True,
    stable_tail: bool = True,
) -> list[int]:
    """The new order of row ids after one IterIT update (see the module docstring)."""
    order = list(order)
    head = order[:count]
    head_scores = np.asarray([scores[i] for i in head], dtype=np.float32)
    valid = [p for p, s in enumerate(head_scores) if s < 1.0]
    high = [p for p, s in enumerate(head_scores) if s >= 1.0]
    valid_scores = head_scores[valid]
    if stable_tail:
        by_ifd = sorted(range(len(valid)), key=lambda k: (-valid_scores[k], k))
    else:
        by_ifd = torch.argsort(torch.tensor(valid_scores, dtype=torch.bfloat16), descending=True).tolist()
    if score_type == "IFD" or not valid:
        picks_local = by_ifd
    else:
        picks = _greedy(valid_scores, [documents[head[p]] for p in valid], select_count, gamma, mask_chosen)
        chosen = set(picks)
        picks_local = picks + [k for k in by_ifd if k not in chosen]
    ranked = [head[valid[k]] for k in picks_local]
    return ranked[:select_count] + [head[p] for p in high] + ranked[select_count:] + order[count:]


def _greedy(scores: np.ndarray, documents: list[str], select_count: int, gamma: float, mask_chosen: bool) -> list[int]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    w = TfidfVectorizer(ngram_range=(1, 3)).fit_transform(documents).tocsc()
    row_sums = np.asarray(w.sum(axis=1)).ravel()
    structure = w.tocsr()  # which columns each row uses (the values are read from w)
    nonzero_left = np.diff(structure.indptr)  # rows whose entries all reach 0 get a sum of exactly 0
    weights = np.asarray(scores, dtype=np.float32)
    alive = np.ones(len(documents), dtype=bool)
    picks = []
    for _ in range(select_count):
        final = weights * row_sums
        if mask_chosen:
            if not alive.any():
                break
            final = np.where(alive, final, -np.inf)
        best = int(np.argmax(final))
        picks.append(best)
        if not alive[best]:  # a repeat (reference mode): its entries are all zero already
            continue
        alive[best] = False
        for col in structure.indices[structure.indptr[best] : structure.indptr[best + 1]]:
            lo, hi = w.indptr[col], w.indptr[col + 1]
            rows = w.indices[lo:hi]
            old = w.data[lo:hi].copy()
            w.data[lo:hi] *= gamma
            at = lo + int(np.searchsorted(rows, best))
            w.data[at] = 0.0
            row_sums[rows] -= old - w.data[lo:hi]
            emptied = rows[(old != 0) & (w.data[lo:hi] == 0)]
            nonzero_left[emptied] -= 1
            row_sums[emptied[nonzero_left[emptied] == 0]] = 0.0
    return picks


class SelectedView(torch.utils.data.Dataset):
    """The first n rows of the current IterIT order, as a dataset the Trainer can iterate."""

    def __init__(self, dataset, selection: IterITSelection):
        self.dataset, self.selection = dataset, selection

    def __len__(self) -> int:
        return self.selection.n

    def __getitem__(self, i: int):
        return self.dataset[self.selection.order[i]]


class IterITSelection:
    """The evolving order over a training set: scores per row and the current first-n subset."""

    def __init__(self, dataset, responses: Sequence[str], eos_token: str, *, ratio: float = 0.05, update_ratio: int = 3, gamma: float = 0.1, score_type: str = "BOTH"):
        self.dataset = dataset
        self.documents = [r + eos_token for r in responses]
        self.N = len(self.documents)
        self.n = math.floor(self.N * ratio) if ratio <= 1 else int(ratio)
        self.update_ratio, self.gamma, self.score_type = update_ratio, gamma, score_type
        self.order = list(range(self.N))
        self.scores = np.zeros(self.N, dtype=np.float32)
        self.history: list[dict] = []
        self.view = SelectedView(dataset, self)

    def rescore_count(self, epoch: int) -> int:
        return self.N if epoch == 0 or self.update_ratio <= 1 else min(self.n * self.update_ratio, len(self.order))

    def update(self, epoch: int, scores_of: Callable[[list[int]], np.ndarray]) -> None:
        count = self.rescore_count(epoch)
        rows = self.order[:count]
        self.scores[rows] = scores_of(rows)
        self.order = greedy_order(self.scores, self.documents, self.order, count, self.n, gamma=self.gamma, score_type=self.score_type)
        self.history.append({"epoch": epoch, "rescored": count, "selected": list(self.order[: self.n])})


def __getattr__(name: str):
    # The callback subclasses transformers' TrainerCallback: built on first use, so that importing
    # this module (for the score and the strategy) does not load transformers.
    if name == "IterITCallback":
        global IterITCallback
        IterITCallback = _callback_class()
        return IterITCallback
    raise AttributeError(name)


def _callback_class():
    from transformers import TrainerCallback

    class IterITCallback(TrainerCallback):
        """Re-selects the training subset before every epoch with the current model.

        `score_rows(model, row_ids)` returns IterIT IFDs (bf16-stored values) for rows of the full set;
        `initial_scores` (e.g. instance_scores' iterit_ifd) replaces the first full scoring pass.
        The Trainer must be given `selection.view` as train_dataset and `dataloader_num_workers=0`
        (worker processes would keep a stale copy of the selection).
        """

        def __init__(self, selection: IterITSelection, score_rows: Callable, initial_scores: np.ndarray | None = None):
            self.selection, self.score_rows, self.initial_scores = selection, score_rows, initial_scores
            self.epoch = 0

        def on_train_begin(self, args, state, control, **kwargs):
            if getattr(args, "dataloader_num_workers", 0):
                raise ValueError("IterITCallback needs dataloader_num_workers=0: workers would keep a stale selection")
            self.epoch = 0

        def on_epoch_begin(self, args, state, control, model=None, **kwargs):
            if self.epoch == 0 and self.initial_scores is not None:
                self.selection.update(0, lambda rows: np.asarray(self.initial_scores, dtype=np.float32)[rows])
            else:
                was_training = model.training
                model.eval()
                try:
                    self.selection.update(self.epoch, lambda rows: np.asarray(self.score_rows(model, rows), dtype=np.float32))
                finally:
                    model.train(was_training)
            self.epoch += 1

    return IterITCallback


# --------------------------------------------------------------------------- plugins


class IterITSettings(Settings):
    iterit_max_length: int | None = Field(None, description="IterIT truncation; null = the model's max positions.")
    iterit_chat_template: str = Field("model", description="IterIT chat template: model (the scorer's own), llama-3.1 (IterIT's train.py), or a Jinja file.")
    iterit_strip_output: bool = Field(True, description="Strip responses before the chat template (fixes the reference's |trim pitfall).")
    iterit_add_pad: bool = Field(False, description="Score as after IterIT's train.py adds a mean-initialised [PAD] token to a tokenizer without one (shifts losses by about 1e-5 relative).")


def chat_template(s: IterITSettings) -> str | None:
    """The Jinja text of the template setting (None: the scorer's own)."""
    if s.iterit_chat_template == "model":
        return None
    if s.iterit_chat_template in ITERIT_TEMPLATES:
        return ITERIT_TEMPLATES[s.iterit_chat_template]
    path = Path(s.iterit_chat_template)
    if not path.is_file():
        raise ValueError(f"iterit_chat_template {s.iterit_chat_template!r} is neither model, one of {sorted(ITERIT_TEMPLATES)}, nor a file")
    return path.read_text()


def compute(rows: pl.DataFrame, s: IterITSettings, scorer) -> pl.DataFrame:
    tokenizer, model = scorer.load()
    max_len = s.iterit_max_length or int(getattr(model.config, "max_position_embeddings", 8192))
    r = iterit_ifd(model, tokenizer, samples_of(rows), max_length=max_len, token_budget=scorer.token_budget,
                   strip_output=s.iterit_strip_output, chat_template=chat_template(s), add_pad=s.iterit_add_pad)
    return pl.DataFrame({
        "row_id": rows["row_id"],
        "iterit_cl": [x.cl for x in r],
        "iterit_pl": [x.pl for x in r],
        "iterit_ifd": [x.ifd_bf16 for x in r],
        "iterit_ifd_fp32": [x.ifd for x in r],
        "iterit_answer_tokens": [x.answer_tokens for x in r],
    }, schema=ITERIT_SCORE.schema())


ITERIT_SCORE = ScoreMethod(
    name="iterit",
    description="IterIT IFD under a chat template, stored as bf16",
    settings=IterITSettings,
    version=VERSION,
    columns={
        "iterit_cl": Column(pl.Float64, "Mean answer loss given the conversation (chat template)."),
        "iterit_pl": Column(pl.Float64, "Mean answer loss alone (chat template)."),
        "iterit_ifd": Column(pl.Float64, "IterIT IFD = exp(cl) / exp(pl), rounded to bf16 as IterIT stores it."),
        "iterit_ifd_fp32": Column(pl.Float64, "The same IFD before the bf16 rounding."),
        "iterit_answer_tokens": Column(pl.Int32, "Answer tokens scored."),
    },
    compute=compute,
    offers=("iterit_ifd",),
    histograms={"iterit_ifd": "IterIT IFD (chat template)"},
    extra_key=chat_template,  # the template's text, so an edited template file re-scores
)


class IterITStrategySettings(Settings):
    iterit_gamma: float = Field(0.1, description="N-gram weight decay per selected response.")
    iterit_eos: str | None = Field(None, description="EOS string appended to each response document; null = the scorer tokenizer's.")


def pick(c: Candidates, budget: Budget, s: IterITStrategySettings) -> Picked:
    scores = c.column("iterit_ifd").astype(np.float32)
    eos = s.iterit_eos if s.iterit_eos is not None else c.eos_token() if c.eos_token else ""  # IterIT: output + tokenizer.eos_token
    docs = [r + eos for r in c.rows["response"].to_list()]
    order = greedy_order(scores, docs, range(c.n), c.n, budget.rows, gamma=s.iterit_gamma)
    picked = [i for i in order[: budget.rows] if scores[i] < 1]
    gain = empty_gain(c.n)
    gain[picked] = scores[picked]
    reason = {i: ("IFD >= 1" if scores[i] >= 1 else "no IFD" if np.isnan(scores[i]) else "diversity-weighted score below the budget") for i in unpicked(c.n, picked)}
    return Picked(picked, gain, "IterIT IFD", reason, {i for i in range(c.n) if not scores[i] < 1})


ITERIT = Strategy(
    name="iterit",
    description="IterIT: IFD x TF-IDF diversity greedy over the responses plus the scorer's EOS.",
    settings=IterITStrategySettings,
    version=VERSION,
    pick=pick,
)
