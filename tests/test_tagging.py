"""Tagger answers, prompts and the three tagger backends (offline keyphrases, local transformers,
an OpenAI-compatible endpoint served on localhost)."""

import json
from pathlib import Path

import pytest

import re

from curation_assets.methods.tagging import critic_messages, keyphrase_tags, parse_tags, parse_tags_reference, same_tags, tagging_messages
from openai_stub import stub_server, tags_json
from resources.llm import ChatModelResource, ParseError
from resources.models import EmbedderResource
from resources.tagger import TaggerResource

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = [{"tag": "Biology", "explanation": "about life"}, {"tag": "General Knowledge", "explanation": ""}]


@pytest.mark.parametrize(
    "answer",
    [
        '[{"tag": "Biology", "explanation": "about life"}, {"tag": "General Knowledge", "explanation": ""}]',
        '```json\n[{"tag": "Biology", "explanation": "about life"}, {"tag": "General Knowledge", "explanation": ""}]\n```',
        '```JSON\r\n[{"tag": "Biology", "explanation": "about life"}, {"tag": "General  Knowledge"}]\r\n```',
        '```[{"tag": "Biology", "explanation": "about life"}, {"tag": "General Knowledge", "explanation": ""}]```',
        'Here are the tags:\n{"tags": [{"tag": "Biology", "explanation": "about life"}, {"tag": "General Knowledge", "explanation": ""}]}',
    ],
)
def test_parse_tags_accepts_the_usual_wrappings(answer):
    assert parse_tags(answer) == EXPECTED


@pytest.mark.parametrize(
    "answer",
    ["", "no json here", "[]", '{"meta": 1}', '[{"name": "x"}]', '[{"tag": ""}]', '[{"tag": "x", "explanation": 3}]', "null", '[{"tag": "' + "x" * 200 + '"}]'],
)
def test_parse_tags_rejects_invalid_answers(answer):
    with pytest.raises(ParseError):
        parse_tags(answer)


@pytest.mark.parametrize(
    "answer, tags",
    [  # a small model's usual damage (SmolLM2-135M's answers in the LLM profile), mended
        ('{"tags": [{"tag": "Math", "explanation": "x"}]}\n{"tags": [{"tag": "Math", "explanation": "x"}]}', ["Math"]),
        ('{"tags": [{"tag": "Math", "explanation": "x"},\n]}', ["Math"]),
        ('{"tags": [{"tag": "Math", "explanation": "x"}, {"tag": "Linear Algebra", "explanation": "y"}, {"tag": "Geo', ["Math", "Linear Algebra"]),
        ('[{"tag": "A \\"quoted\\" [b]", "explanation": "}"}, {"tag": "B", "expl', ['A "quoted" [b]']),
        ('{"tags": ["Python loops", " Lists "]}', ["Python loops", "Lists"]),
        ('Sure! {"tags": [{"tag": "Math"}]} I hope this helps {', ["Math"]),
    ],
)
def test_parse_tags_mends_what_small_models_break(answer, tags):
    assert [t["tag"] for t in parse_tags(answer)] == tags


@pytest.mark.parametrize("answer", ['{"tags": [{"tag', '[{"tag": "Math"', '{"tags": [}', '[{"tag": "x"]}'])
def test_parse_tags_mends_nothing_without_a_complete_tag(answer):
    with pytest.raises(ParseError):
        parse_tags(answer)


def tacos_parse(key):
    """tag_cluster.py's normalize_tag_format restated: the content between ```json\n and \n```,
    else the whole answer, through json.loads; any exception makes the row a bad case (None)."""
    def extract(text):
        match = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
        return match.group(1) if match else None

    try:
        try:
            return json.loads(extract(key))
        except Exception:
            return json.loads(key)
    except Exception:
        return None


@pytest.mark.parametrize(
    "answer",
    [
        '```json\n[{"tag": " Biology ", "explanation": "x"}, {"tag": "General   Knowledge", "explanation": ""}]\n```',
        'Tags:\n```json\n[{"tag": "Math", "explanation": "a"}]\n```\nand ```json\n[{"tag": "Other", "explanation": "b"}]\n```',
        '[{"tag": "   ", "explanation": "blank tag"}, {"tag": "Math", "explanation": ""}]',
        "[]",
        '```json\n[{"tag": "NaN score", "explanation": "", "score": NaN}]\n```',
        '```json\nnot json\n```',  # the fence fails, the whole answer fails too
        '```JSON\n[{"tag": "Math", "explanation": ""}]\n```',  # uppercase fence: TACOS reads the whole text, which is no JSON
        '```json\r\n[{"tag": "Math", "explanation": ""}]\r\n```',
        "Here: [{\"tag\": \"Math\", \"explanation\": \"\"}]",
    ],
)
def test_reference_parser_reproduces_tacos(answer):
    expected = tacos_parse(answer)
    if expected is None:
        with pytest.raises(ParseError):
            parse_tags_reference(answer)
    else:
        assert parse_tags_reference(answer) == [{"tag": t["tag"], "explanation": t["explanation"]} for t in expected]


def test_robust_and_reference_parsers_differ_on_whitespace():
    spaced = '[{"tag": " General   Knowledge ", "explanation": ""}]'
    assert parse_tags(spaced)[0]["tag"] == "General Knowledge"  # stripped, inner whitespace collapsed
    assert parse_tags_reference(spaced)[0]["tag"] == " General   Knowledge "  # TACOS keeps it verbatim
    one_blank = '[{"tag": "Math", "explanation": ""}, {"tag": "  ", "explanation": ""}]'
    with pytest.raises(ParseError):
        parse_tags(one_blank)  # one whitespace-only tag rejects the whole answer
    assert [t["tag"] for t in parse_tags_reference(one_blank)] == ["Math", "  "]
    for crash in ('{"tag": "Math", "explanation": ""}', '[{"tag": "Math"}]', "null", "[1]"):
        with pytest.raises(ParseError):  # TACOS parses these, then crashes on them later
            parse_tags_reference(crash)


def test_reference_parser_through_the_http_tagger():
    answer = '```json\n[{"tag": "Math ", "explanation": "x"}, {"tag": "Math ", "explanation": "again"}]\n```'
    with stub_server(lambda body, attempt: (200, answer, 0)) as (stub, url):
        reference = http_tagger(url, parser="reference")
        [result] = reference.tag(["What is 2 + 2?"])
        [robust] = http_tagger(url).tag(["What is 2 + 2?"])
    assert result.ok and [t["tag"] for t in result.value] == ["Math ", "Math "]  # repeats and spaces kept
    assert [t["tag"] for t in robust.value] == ["Math", "Math"]
    assert reference.version() != http_tagger(url).version()


def test_prompt_is_filled_once():
    tricky = "Explain the string '{instruction}' and [end] markers."
    [system, user] = tagging_messages(tricky, "instag")
    assert tricky in user["content"] and user["content"].count("[begin]") == 1
    assert system["role"] == "system" and "JSON" in system["content"]
    assert '[{"tag": str, "explanation": str}]' in user["content"]
    atomic = tagging_messages("Solve 3x = 9.", "atomic")[1]["content"]
    assert '{"tags": [{"tag": str, "explanation": str}]}' in atomic and "Solve 3x = 9." in atomic


def test_keyphrase_tagger_on_real_rows(raw_data):
    rows = json.loads((raw_data / "gpteacher" / "codegen-instruct.json").read_text())[:40]
    texts = [r["instruction"] for r in rows]
    embedder = EmbedderResource()
    first = keyphrase_tags(texts, embedder.encode, top_n=5)
    assert all(1 <= len(tags) <= 5 for tags in first)
    assert first == keyphrase_tags(texts, embedder.encode, top_n=5)  # deterministic
    languages = {"python", "javascript", "java", "c++", "c#", "sql", "shell", "bash", "ruby", "php"}
    hits = sum(any(any(w in t["tag"] for w in languages) for t in tags) for tags in first)
    assert hits >= 25, first  # code instructions get their language as a tag
    assert keyphrase_tags(["", "the of and"], embedder.encode) == [[], []]


def test_tagger_resource_keyphrase_backend_reports_rows_without_tags():
    results = TaggerResource(top_n=3).tag(["Write a haiku about autumn leaves.", "   "])
    assert results[0].ok and len(results[0].value) == 3
    assert not results[1].ok and results[1].error == "no keyphrase found"


# --------------------------------------------------------------------------- HTTP backend


def http_tagger(url, **kwargs):
    defaults = {"backend": "openai", "base_url": url, "model": "stub", "backoff_s": 0.01, "timeout_s": 2.0, "max_retries": 2}
    return TaggerResource(**{**defaults, **kwargs})


def test_http_backend_tags_with_bounded_concurrency_and_env_key(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "sk-secret-123")

    def reply(body, attempt):
        assert body["model"] == "stub" and body["temperature"] == 0.6 and body["max_tokens"] == 1024
        return 200, tags_json("Math", "Word Problem"), 0.05

    with stub_server(reply) as (stub, url):
        tagger = http_tagger(url, api_key_env="STUB_KEY", max_concurrency=3)
        results = tagger.tag([f"Question {i}?" for i in range(12)])
    assert all(r.ok for r in results) and results[0].value[0]["tag"] == "Math"
    assert stub.max_in_flight <= 3 and stub.calls == 12
    assert set(stub.auth_headers) == {"Bearer sk-secret-123"}
    assert "sk-secret" not in json.dumps(tagger.generation_key()) and "sk-secret" not in tagger.version()


def test_http_backend_retries_500_429_timeouts_and_malformed_answers():
    def reply(body, attempt):
        text = body["messages"][-1]["content"]
        if "flaky" in text and attempt == 0:
            return 500, b"oops", 0
        if "busy" in text and attempt < 2:
            return 429, b"{}", 0
        if "slow" in text and attempt == 0:
            return 200, tags_json("Late"), 3.0  # longer than the time-out
        if "garbled" in text and attempt == 0:
            return 200, "Sure! Here are some tags: Math, Logic", 0
        if "broken" in text and attempt == 0:
            return 200, b'{"choices": []}', 0
        return 200, tags_json("Fine"), 0

    with stub_server(reply) as (stub, url):
        results = http_tagger(url, timeout_s=0.5).tag(["flaky", "busy", "slow", "garbled", "broken", "plain"])
    assert [r.ok for r in results] == [True] * 6
    assert [r.attempts for r in results] == [2, 3, 2, 2, 2, 1]


def test_http_backend_gives_up_with_a_reason_and_keeps_the_row():
    def reply(body, attempt):
        text = body["messages"][-1]["content"]
        if "always-500" in text:
            return 503, b"down", 0
        if "always-garbled" in text:
            return 200, "I cannot do that.", 0
        if "bad-request" in text:
            return 400, b'{"error": "bad"}', 0
        if "hangs" in text:
            return 200, tags_json("Never"), 3.0
        return 200, tags_json("Fine"), 0

    with stub_server(reply) as (stub, url):
        results = http_tagger(url, timeout_s=0.3, max_retries=1).tag(["always-500", "always-garbled", "bad-request", "hangs", "ok"])
    assert [r.ok for r in results] == [False, False, False, False, True]
    assert results[0].error == "HTTP 503" and results[0].attempts == 2
    assert results[1].error.startswith("unparseable answer") and results[1].text == "I cannot do that."
    assert results[2].error.startswith("HTTP 400") and results[2].attempts == 1  # not retried
    assert results[3].error.startswith("timed out")


def critic_reply(body, attempt):
    """Tags "Math"; the critic splits it into two atomic tags, accepts them, and fails on "garbled"."""
    text = body["messages"][-1]["content"]
    if not text.startswith("A tagger listed"):
        return 200, tags_json("Math"), 0
    current = [t["tag"] for t in json.loads(text.split("Tags:\n", 1)[1].split("\n", 1)[0])["tags"]]
    if "garbled" in text:
        return 200, "Looks fine to me!", 0
    if current == ["Math"]:
        return 200, json.dumps({"tags": [{"tag": "linear equations", "explanation": "x"}, {"tag": "integer division", "explanation": "y"}]}), 0
    return 200, json.dumps({"tags": [{"tag": t.upper(), "explanation": ""} for t in reversed(current)]}), 0  # the same concepts


def test_critic_pass_corrects_tags_until_the_critic_accepts_them():
    with stub_server(critic_reply) as (stub, url):
        tagger = http_tagger(url, prompt_style="atomic", critic_rounds=3)
        [result] = tagger.tag(["Solve 3x = 9 and divide 7 by 2."])
    assert result.ok and [t["tag"] for t in result.value] == ["linear equations", "integer division"]
    assert stub.calls == 3 and result.attempts == 3  # tag, a correcting critic round, an accepting one
    assert result.error is None


def test_critic_rounds_are_bounded_and_a_failed_critic_keeps_the_tags():
    with stub_server(critic_reply) as (stub, url):
        [one_round] = http_tagger(url, prompt_style="atomic", critic_rounds=1).tag(["Solve 3x = 9."])
        [garbled] = http_tagger(url, prompt_style="atomic", critic_rounds=2, max_retries=1).tag(["garbled query"])
        [off] = http_tagger(url, prompt_style="atomic").tag(["Solve 3x = 9."])
    assert [t["tag"] for t in one_round.value] == ["linear equations", "integer division"] and one_round.attempts == 2
    assert garbled.ok and [t["tag"] for t in garbled.value] == ["Math"] and garbled.attempts == 3  # 1 + 2 critic tries
    assert garbled.error.startswith("critic round 1: unparseable answer") and garbled.error.endswith("kept the tags before it")
    assert [t["tag"] for t in off.value] == ["Math"] and off.attempts == 1


def test_critic_prompt_is_filled_once_and_versions_the_cache():
    tags = [{"tag": "Math {tags}", "explanation": "x"}]
    user = critic_messages("What is '{instruction}'?", tags)[1]["content"]
    assert "What is '{instruction}'?" in user and '{"tags":[{"tag":"Math {tags}","explanation":"x"}]}' in user
    assert same_tags([{"tag": "A b"}, {"tag": "c"}], [{"tag": "C"}, {"tag": "a B"}]) and not same_tags([{"tag": "a"}], [{"tag": "a"}, {"tag": "b"}])
    base = TaggerResource(backend="openai", prompt_style="atomic")
    assert base.version() == TaggerResource(backend="openai", prompt_style="atomic", critic_rounds=0).version()
    assert base.version() != TaggerResource(backend="openai", prompt_style="atomic", critic_rounds=1).version()
    with pytest.raises(ValueError):
        TaggerResource(backend="openai", critic_rounds=4)  # the paper's loop has at most 3 rounds


# --------------------------------------------------------------------------- transformers backend


def test_transformers_backend_generates_in_batches_with_the_chat_template():
    chat = ChatModelResource(backend="transformers", model=str(FIXTURES / "tiny_llama"), max_tokens=8, batch_size=3, max_retries=1, seed=0)
    seen = []

    def accept(text):
        seen.append(text)
        return text

    results = chat.generate([[{"role": "user", "content": f"Tag instruction {i}."}] for i in range(5)], accept)
    assert all(r.ok and isinstance(r.value, str) for r in results) and len(seen) == 5


def test_a_final_assistant_turn_is_continued_and_max_tokens_overrides():
    from resources.llm import render_chat
    from resources.models import load_causal_lm

    tokenizer, _ = load_causal_lm(str(FIXTURES / "tiny_llama"), "cpu", "float32")
    question = [{"role": "user", "content": "Score it."}]
    prefilled = question + [{"role": "assistant", "content": "Analysis.\n[Response 1]:"}]
    opened = render_chat(tokenizer, question)
    assert render_chat(tokenizer, prefilled) == opened + "Analysis.\n[Response 1]:"  # open, no end-of-turn token
    assert render_chat(None, prefilled) == "user: Score it.\nassistant: Analysis.\n[Response 1]:"  # no template
    chat = ChatModelResource(backend="transformers", model=str(FIXTURES / "tiny_llama"), max_tokens=8, max_retries=0, seed=0)
    [short] = chat.generate([prefilled], lambda text: text, max_tokens=2)
    [full] = chat.generate([prefilled], lambda text: text)
    # Greedy: the 2-token answer begins the 8-token one (a cut multi-byte character aside).
    assert short.ok and full.value.startswith(short.value.rstrip("\ufffd")) and len(short.value) < len(full.value) and chat.max_tokens == 8


def test_transformers_tagger_marks_unparseable_rows_failed():
    # A random tiny model cannot write JSON: every row ends failed, with its reason and attempts.
    tagger = TaggerResource(backend="transformers", model=str(FIXTURES / "tiny_llama"), max_tokens=6, batch_size=4, max_retries=1, seed=0)
    results = tagger.tag(["Write a poem.", "Add 2 and 3.", "Name a planet."])
    assert [r.ok for r in results] == [False] * 3
    assert all(r.error.startswith("unparseable answer") and r.attempts == 2 for r in results)


def test_keybert_keyphrases_known_answers():
    texts = ["Sort a python list of numbers.", "Merge two python dictionaries.", "Bake sourdough bread at home.", "Please explain."]
    encode = EmbedderResource().encode
    shared = keyphrase_tags(texts, encode, top_n=2, ngram_range=(1, 1), min_df=2)
    # min_df=2: only n-grams found in two instructions are candidates; "explain" is an instruction word.
    assert [[t["tag"] for t in tags] for tags in shared] == [["python"], ["python"], [], []]
    one = keyphrase_tags(["Sourdough bread baking at home"], encode, top_n=1, ngram_range=(1, 2), diversity=0.0)
    assert len(one) == 1 and len(one[0]) == 1 and "sourdough" in one[0][0]["tag"]
