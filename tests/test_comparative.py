"""methods/comparative.py (TACOS's judge): answers, prompts, the pairing plan, clusters, Bradley-Terry.
The comparative_scores asset is tested in test_instance_scores.py."""

import re

import numpy as np
import pytest

from curation_assets.methods import selection
from curation_assets.methods.comparative import (
    PAIR_PROMPT, bradley_terry, cluster_members, pair_messages, parse_pair_scores, parse_pair_scores_reference, parse_prefilled_score,
    plan_comparisons, score_prefill,
)
from resources.llm import ParseError


@pytest.mark.parametrize(
    "answer,scores",
    [
        ("Analysis...\n[Response 1]: 85\n[Response 2]: 72", (85, 72)),
        ("[Response 1]: [85]\n[Response 2]: [72.5]", (85, 72.5)),
        ("[Response 1] Score: 85\n[Response 2] Score: 90", (85, 90)),
        ("**Response 1**: 60/100\n**Response 2**: 40/100", (60, 40)),
        ("Response 1 has 3 flaws ... final:\nResponse 1: 55\nResponse 2: 66", (55, 66)),
        ("response 1 score = 10\nresponse 2 score = 0", (10, 0)),
        ("[Response 1]: 80\n[Response 2]: 60\nNote: Response 2 = 3 points lower.", (80, 60)),  # prose cannot override the lines
    ],
)
def test_judge_answers_in_the_usual_formats(answer, scores):
    assert parse_pair_scores(answer) == scores


@pytest.mark.parametrize("answer", ["I cannot compare these.", "[Response 1]: 85", "[Response 1]: 150\n[Response 2]: 20", "[Response 1]: -5\n[Response 2]: 20"])
def test_unusable_answers_are_errors_never_zero(answer):
    with pytest.raises(ParseError):
        parse_pair_scores(answer)


def test_prompt_keeps_placeholder_like_text():
    messages = pair_messages(("Explain {response_2} please", "It is {instruction_1}."), ("Q2", "A2"))
    user = messages[1]["content"]
    assert "Explain {response_2} please" in user and "It is {instruction_1}." in user and user.endswith("[Response 2]\nA2")


def tacos_scores(result):
    """sorted_1000.py's reading restated: the first match of each regex, 0 when there is none."""
    scores_1 = re.findall(r"\[Response 1\] Score: (\d+)", result) or [0]
    scores_2 = re.findall(r"\[Response 2\] Score: (\d+)", result) or [0]
    return int(scores_1[0]), int(scores_2[0])


@pytest.mark.parametrize(
    "answer",
    [
        "[Response 1] Score: 85\n[Response 2] Score: 72",
        "[Response 1] Score: 85\n[Response 1] Score: 10\n[Response 2] Score: 150",  # first match wins; no range check
        "[Response 1]: 85\n[Response 2]: 72",  # the pair prompt's own format: the regex misses both
        "[Response 1] Score: 85.5\n[Response 2] Score:90",  # 85 from "85.5"; "Score:90" has no space
        "[response 1] score: 60\n**[Response 2] Score: 40**",
        "No scores at all.",
    ],
)
def test_reference_judge_parser_reproduces_sorted_1000(answer):
    assert parse_pair_scores_reference(answer) == tacos_scores(answer)


def test_reference_prompt_is_filled_by_chained_replacement():
    first, second = ("Explain {response_2} please.", "Sure."), ("Say hi.", "Hi!")
    chained = pair_messages(first, second, chained=True)[1]["content"]
    expected = PAIR_PROMPT
    for placeholder, value in (("{instruction_1}", first[0]), ("{instruction_2}", second[0]), ("{response_1}", first[1]), ("{response_2}", second[1])):
        expected = expected.replace(placeholder, value)  # api_score_pairs.py's order
    assert chained == expected and "Explain Hi! please." in chained
    assert "Explain {response_2} please." in pair_messages(first, second)[1]["content"]  # filled once


def test_reference_plan_drops_an_odd_clusters_last_item():
    plan = plan_comparisons({0: ["a", "b", "c"], 1: ["x"]}, drop_odd=True)
    assert [(p.cluster, p.first, p.second, p.keep) for p in plan] == [(0, "a", "b", (True, True))]


def test_pairing_plan():
    plan = plan_comparisons({0: ["a", "b", "c", "d", "e"], 1: ["x"], 2: ["p", "q"]}, seed=1)
    faithful = [(p.cluster, p.first, p.second, p.keep) for p in plan]
    assert faithful[:2] == [(0, "a", "b", (True, True)), (0, "c", "d", (True, True))]
    leftover = faithful[2]
    assert leftover[:2] == (0, "e") and leftover[2] in "abcd" and leftover[3] == (True, False)
    assert (2, "p", "q", (True, True)) in faithful and not any(c == 1 for c, *_ in faithful)  # a cluster of one: no partner
    swapped = plan_comparisons({0: ["a", "b"]}, rounds=2, both_orders=True, seed=0)
    assert [(p.round, p.first, p.second) for p in swapped][:2] == [(0, "a", "b"), (0, "b", "a")] and len(swapped) == 4


def tacos_label_map(representatives):
    """tag_process.py step 2 restated: for each representative (in file order) and each of its tags
    in order, append the row to its tag's label unless it is there already."""
    label_tag_dict = {}
    for row, tag_labels in representatives:
        for label in tag_labels:
            if label not in label_tag_dict:
                label_tag_dict[label] = [row]
            elif row not in label_tag_dict[label]:
                label_tag_dict[label].append(row)
    return label_tag_dict


def test_clusters_follow_the_order_of_a_rows_tags():
    # The first representative's tags lie in clusters 7 then 3: TACOS's map lists cluster 7 first,
    # so 7 is judged first and, at equal size, its budget visit comes first.
    reps = [("a", [7, 3]), ("b", [3, 7]), ("c", [3])]
    members = cluster_members(reps)
    assert list(members.items()) == list(tacos_label_map(reps).items()) == [(7, ["a", "b"]), (3, ["a", "b", "c"])]
    plan = plan_comparisons({7: ["a", "b"], 3: ["a", "b"]})
    assert [p.cluster for p in plan] == [7, 3]
    # Cluster 7 (judged first) takes row a; sorted labels would visit cluster 3 first and take a there.
    scores = {"a": 90, "b": 80}
    judged = [(["a", "b"].index(r), p.cluster, scores[r]) for p in plan for r in (p.first, p.second)]
    result = selection.tacos_select(judged, budget=2, per_cluster=1, fill=False)
    assert result.selected == [0, 1] and result.picked_in == {0: 7, 1: 3}


def test_bradley_terry_orders_by_wins_and_solves_its_likelihood_equations():
    first, second, result = ["a", "a", "b", "a", "c", "d"], ["b", "c", "c", "b", "b", "e"], [1, 1, 1, 1, 0.5, 0]
    strength = bradley_terry(first, second, result)
    assert strength["a"] > strength["b"] > strength["c"] and strength["e"] > strength["d"]
    # At the maximum, each item's expected wins (prior included) equal its observed wins.
    p = {k: np.exp(v) for k, v in strength.items()}
    for item in p:
        observed = 0.5 + sum(r if f == item else 1 - r for f, s, r in zip(first, second, result) if item in (f, s))
        expected = p[item] / (p[item] + 1) + sum(p[item] / (p[f] + p[s]) for f, s in zip(first, second) if item in (f, s))
        assert abs(observed - expected) < 1e-8
    assert bradley_terry(["x", "y"], ["y", "x"], [1, 1]) == {"x": 0.0, "y": 0.0}
    assert bradley_terry([], [], []) == {}


def test_score_prefill_opens_the_next_score_line_after_the_answer():
    asked = pair_messages(("Q1", "A1"), ("Q2", "A2"))
    first = score_prefill(asked, "Both fine.\n\n", ())
    assert first[:2] == asked and first[-1] == {"role": "assistant", "content": "Both fine.\n\n[Response 1]:"}
    second = score_prefill(asked, "Both fine.", (72.0,))
    assert second[-1]["content"] == "Both fine.\n\n[Response 1]: 72\n[Response 2]:"
    looping = score_prefill(asked, "loop " * 1000, ())
    assert len(looping[-1]["content"]) < 1600  # a looping answer is cut before the prefill


@pytest.mark.parametrize("text,score", [(" 72", 72.0), ("85/100 because", 85.0), (" **60**", 60.0), ("100", 100.0), (" 7.5\n", 7.5)])
def test_prefilled_score_is_the_number_written_there(text, score):
    assert parse_prefilled_score(text) == score


@pytest.mark.parametrize("text", ["", " none", " 150", "-5", " score: 70"])
def test_prefilled_score_rejects_anything_else(text):
    with pytest.raises(ParseError):
        parse_prefilled_score(text)
