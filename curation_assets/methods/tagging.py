"""Open tagging: the prompts, the parser of tagger answers, and an offline keyphrase tagger.

Two prompt styles (research/tags-tacos.md):
- "instag": InsTag's intention tagging, reused by TACOS (§1.2, §3): coarse intention tags with an
  explanation, answered as a JSON list `[{"tag", "explanation"}]`. Only the instruction is shown.
- "atomic": TAGS's fine-grained tagging (§2.2): the atomic knowledge concepts and skills a query
  needs, answered as `{"tags": [{"tag", "explanation"}]}`. Optionally followed by TAGS's critic pass
  (§2.2, the paper's Act–Critic loop): a second call shows the query and its tags and asks for the
  corrected list (missing, too broad or non-atomic tags fixed), at most 3 rounds.
The offline default ("keyphrase") needs no LLM: KeyBERT keyphrases of the instruction, chosen by
embedding similarity with maximal-marginal-relevance diversity.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import json

import numpy as np
import orjson

from curation_assets.methods.chat import Messages, ParseError

INSTAG_SYSTEM = (
    "You are a helpful assistant. Identify the intentions of the user in the query below, give each "
    "one a tag and explain it briefly. Answer in JSON: a list of objects with the keys \"tag\" and "
    "\"explanation\"."
)
INSTAG_USER = (
    "You are a tagging system that gives useful tags to the intentions behind instructions, so that "
    "instructions can be told apart when training a helpful AI assistant. Here is an instruction:\n"
    "[begin]\n{instruction}\n[end]\n"
    "Tag the main intentions of the instruction with coarse-grained tags, such as \"Spelling and "
    "Grammar Check\" or \"Cosplay\". Give a list of tag titles, each with a short explanation, "
    "strictly in this JSON format: [{{\"tag\": str, \"explanation\": str}}]. Answer in English."
)
ATOMIC_SYSTEM = "You are an expert annotator of the knowledge and skills that instructions require. Answer in JSON only."
ATOMIC_USER = (
    "List the atomic knowledge concepts and skills that answering the query below requires.\n"
    "- Each tag is a short, specific noun phrase of 2 to 6 words naming one concept.\n"
    "- Prefer a specific concept (for example \"modular inverse\") to a broad category (for example "
    "\"Mathematics\").\n"
    "- Give between 3 and 10 tags.\n"
    "Query:\n[begin]\n{instruction}\n[end]\n"
    "Answer strictly in this JSON format: {{\"tags\": [{{\"tag\": str, \"explanation\": str}}]}}"
)
PROMPTS = {"instag": (INSTAG_SYSTEM, INSTAG_USER), "atomic": (ATOMIC_SYSTEM, ATOMIC_USER)}
CRITIC_SYSTEM = "You are a strict reviewer of knowledge tags. Answer in JSON only."
CRITIC_USER = (
    "A tagger listed the atomic knowledge concepts and skills that answering the query below requires.\n"
    "Check its tags and correct them:\n"
    "- add a concept the query needs that is missing;\n"
    "- replace a tag that is too broad (for example \"Mathematics\") with the specific concept;\n"
    "- split a tag that names more than one concept.\n"
    "Each tag stays a short noun phrase of 2 to 6 words; give between 3 and 10 tags.\n"
    "Query:\n[begin]\n{instruction}\n[end]\n"
    "Tags:\n{tags}\n"
    "Answer strictly in this JSON format with the corrected list, or the same list if it needs no change: "
    "{{\"tags\": [{{\"tag\": str, \"explanation\": str}}]}}"
)
MAX_CRITIC_ROUNDS = 3  # the paper's Act–Critic loop stops after at most 3 iterations
MAX_TAG_CHARS = 120

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```", re.DOTALL)


def tagging_messages(instruction: str, style: str) -> Messages:
    """The chat messages for one instruction. The template is filled once, so text inside the
    instruction that looks like a placeholder is left alone (TACOS's chained replace was not)."""
    system, user = PROMPTS[style]
    return [{"role": "system", "content": system}, {"role": "user", "content": user.format(instruction=instruction)}]


def critic_messages(instruction: str, tags: list[dict[str, str]]) -> Messages:
    """The critic's chat messages for one query and its current tags (filled once, like the tagger's)."""
    listed = orjson.dumps({"tags": [{"tag": t["tag"], "explanation": t.get("explanation", "")} for t in tags]}).decode()
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": CRITIC_USER.format(instruction=instruction, tags=listed)}]


def same_tags(a: list[dict[str, str]], b: list[dict[str, str]]) -> bool:
    """Whether two tag lists name the same concepts (case and order aside): the critic accepted."""
    return sorted({t["tag"].casefold() for t in a}) == sorted({t["tag"].casefold() for t in b})


def parse_tags(text: str) -> list[dict[str, str]]:
    """Tags from a tagger's answer (the robust parser, the default): a JSON list, or an object with
    a "tags" list, optionally inside a ``` fence (any case, CRLF or not). Raises ParseError if no
    valid tag list is found.

    Where it differs from TACOS's parser (`parse_tags_reference`): it also reads ```JSON or bare ```
    fences, CRLF line ends, fences without a newline, JSON after leading prose, an object holding a
    "tags" list, a single {tag} object and a list of plain tag strings; small models' usual damage
    is mended, each repair only after the strict reading failed: the first complete JSON value is
    read when text follows it (an answer repeated twice), trailing commas are dropped, and an
    answer cut off by the token limit keeps the tags it completed. Every tag is stripped and its
    inner whitespace collapsed ("Code  \n Review" is "Code Review"), so spellings that differ only
    in spacing count as one; and the whole answer is validated: an empty list, an item without a
    string "tag", a non-string explanation, or a single tag that is empty or whitespace-only or
    longer than 120 characters rejects the whole answer (re-asked, then a per-row reason), where
    TACOS keeps such answers or crashes on them later.
    """
    if text is None:
        raise ParseError("empty answer")
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start >= 0:
        candidates.append(text[start:])
    last_error = "no JSON found"
    for read in (_strict_json, _mended_json):
        for candidate in candidates:
            try:
                data = read(candidate.strip())
            except ValueError as exc:
                last_error = last_error if read is _mended_json else f"invalid JSON ({str(exc)[:80]})"
                continue
            try:
                return _validate(data)
            except ParseError as exc:
                last_error = str(exc)
    raise ParseError(last_error)


def _strict_json(text: str):
    return orjson.loads(text)


_TRAILING_COMMA = re.compile(r",(\s*[\]}])")


def _mended_json(text: str):
    """The first JSON value in `text`, mended: trailing commas dropped, and if the text ends inside
    the value, cut after its last complete item with the open brackets closed."""
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no JSON found")
    text = _close_truncated(text[start:])
    decoder = json.JSONDecoder()
    for attempt in (text, _TRAILING_COMMA.sub(r"\1", text)):
        try:
            return decoder.raw_decode(attempt)[0]
        except ValueError:
            continue
    raise ValueError("no JSON value could be read")


def _close_truncated(text: str) -> str:
    """`text` (starting with a bracket) unchanged if its first value closes; else cut after the
    last bracket that closed inside it, with the brackets still open there closed in order."""
    stack: list[str] = []
    in_string = escaped = False
    cut = None  # (end, brackets still open) after the last closed item
    for i, char in enumerate(text):
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
            continue
        if char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}":
            if not stack or stack.pop() != char:
                return text  # not well nested: leave it to the decoder's error
            if not stack:
                return text
            cut = (i + 1, list(stack))
    if cut is None:
        return text
    end, still_open = cut
    return text[:end] + "".join(reversed(still_open))


_REFERENCE_FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def parse_tags_reference(text: str) -> list[dict[str, str]]:
    """TACOS's parser exactly (tag_cluster.py `normalize_tag_format`): the text between the first
    "```json\n" and the next "\n```" if that is valid JSON, else the whole answer as JSON (Python's
    json, so NaN and Infinity pass); tags are kept verbatim, unstripped, empty ones and an empty list
    included. Where TACOS would crash on a parsed value later (not a list of objects with a string
    "tag" and an "explanation"), this raises ParseError instead, and the row gets a reason."""
    match = _REFERENCE_FENCE.search(text or "")
    try:
        data = json.loads(match.group(1)) if match else None
        if not match:
            raise ValueError
    except ValueError:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ParseError(f"invalid JSON ({str(exc)[:80]})") from exc
    if not isinstance(data, list) or not all(isinstance(t, dict) and isinstance(t.get("tag"), str) and isinstance(t.get("explanation"), str) for t in data):
        raise ParseError("expected a list of {tag: str, explanation: str}")
    return [{"tag": t["tag"], "explanation": t["explanation"]} for t in data]


def _validate(data) -> list[dict[str, str]]:
    if isinstance(data, dict):
        data = data.get("tags", [data] if "tag" in data else None)
    if not isinstance(data, list) or not data:
        raise ParseError("expected a non-empty list of {tag, explanation}")
    tags = []
    for item in data:
        if isinstance(item, str):  # a list of plain tag strings
            item = {"tag": item}
        if not isinstance(item, dict) or not isinstance(item.get("tag"), str):
            raise ParseError("every item needs a string 'tag'")
        tag = " ".join(item["tag"].split())
        explanation = item.get("explanation", "")
        if not isinstance(explanation, str):
            raise ParseError("'explanation' must be a string")
        if not tag or len(tag) > MAX_TAG_CHARS:
            raise ParseError(f"tag is empty or longer than {MAX_TAG_CHARS} characters")
        tags.append({"tag": tag, "explanation": explanation.strip()})
    return tags


# --------------------------------------------------------------------------- offline keyphrases


_WORD = r"(?u)\b[a-zA-Z][a-zA-Z+#\-]*[a-zA-Z+#]\b|\b[a-zA-Z]\+\+|\b[cCfF]#"
# Words that say what to do with the text rather than what it is about: never keyphrases alone.
INSTRUCTION_WORDS = frozenset(
    "answer ask based briefly create describe did does example explain following generate give given help "
    "implement input list make need output please provide question questions rewrite say show summarize "
    "takes tell use used using want way write".split()
)


def keyphrase_tags(
    texts: list[str],
    encode: Callable[[list[str]], np.ndarray],
    *,
    top_n: int = 5,
    ngram_range: tuple[int, int] = (1, 2),
    diversity: float = 0.5,
    min_df: int = 1,
) -> list[list[dict[str, str]]]:
    """KeyBERT keyphrases: the n-grams of each text most similar to the text as a whole.

    KeyBERT (PyPI `keybert`) ranks each text's candidate n-grams (`ngram_range` words, English stop
    words and instruction verbs removed, symbols such as C++ kept) by cosine similarity to the
    text's embedding and picks `top_n` with maximal marginal relevance (`diversity` trades
    similarity for novelty). `min_df` > 1 keeps only n-grams found in that many texts of the batch,
    so that tags are shared by rows rather than phrases of one instruction. `encode` gives L2-normalized embeddings (the packaged MiniLM).
    """
    from keybert import KeyBERT
    from keybert.backend import BaseEmbedder
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

    class Encoder(BaseEmbedder):
        def embed(self, documents, verbose=False):
            return encode([str(d) for d in documents])

    out: list[list[dict[str, str]]] = [[] for _ in texts]
    nonempty = [i for i, t in enumerate(texts) if t and re.search(_WORD, t)]
    if not nonempty:
        return out
    docs = [texts[i] for i in nonempty]
    vectorizer = CountVectorizer(ngram_range=ngram_range, stop_words=sorted(ENGLISH_STOP_WORDS | INSTRUCTION_WORDS), token_pattern=_WORD, lowercase=True, min_df=min_df)
    try:
        vectorizer.fit(docs)
    except ValueError:  # only stop words everywhere
        return out
    found = KeyBERT(model=Encoder()).extract_keywords(docs, vectorizer=vectorizer, top_n=top_n, use_mmr=diversity > 0, diversity=diversity)
    if len(docs) == 1 and (not found or isinstance(found[0], tuple)):  # KeyBERT unwraps a single document
        found = [found]
    for i, keywords in zip(nonempty, found):
        out[i] = [{"tag": phrase, "explanation": f"keyphrase of the instruction (similarity {score:.2f})"} for phrase, score in keywords]
    return out
