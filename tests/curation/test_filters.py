"""Each filter on crafted inputs, then the filters together on samples built from stored chats."""

from collections import Counter

import pytest

from curation import filters
from curation.config import CurationConfig
from curation.curate import Sample, apply_filters


def test_leftover_pii_finds_what_scrubbing_missed_but_not_placeholders():
    # Digit runs also look like phone numbers: more findings than one is fine, fewer is not.
    for text, kind in [
        ("mail me at jane.doe@example.org", "EMAIL_ADDRESS"),
        ("call +1 415 555 0199 today", "PHONE_NUMBER"),
        ("card 4111 1111 1111 1111", "CREDIT_CARD"),
        ("ssn 078-05-1120", "US_SSN"),
        ("from 192.168.10.4", "IP_ADDRESS"),
        ("pay to DE89 3704 0044 0532 0130 00", "IBAN_CODE"),
    ]:
        assert kind in filters.leftover_pii(text), text
    assert filters.leftover_pii("Hi <PERSON>, mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>") == []
    assert filters.leftover_pii("order #123456 ships in 3 to 5 days, 30-day returns") == []
    assert "CREDIT_CARD" not in filters.leftover_pii("ref 4111 1111 1111 1112")  # fails the Luhn check


def test_placeholder_share():
    assert filters.placeholder_share("<PERSON>") == 1.0
    assert filters.placeholder_share("   ") == 1.0
    assert filters.placeholder_share("Hello <PERSON>, your order ships today.") < 0.3
    assert filters.placeholder_share("no placeholders") == 0.0


def test_language_detection_keeps_short_texts_undecided():
    found = filters.languages(
        [
            "Where is my order? It should have arrived last week.",
            "Wo ist meine Bestellung? Sie sollte letzte Woche ankommen.",
            "ok thanks",
        ],
        ["en"],
    )
    assert found[0][0] == "en" and found[1][0] == "de"
    assert found[2] == (None, None)


def test_near_duplicates_need_the_same_label_a_similar_prompt_and_a_similar_answer():
    long_q = "Hello, I bought a pair of headphones in your store last month and the left side stopped working, "
    long_a = "Our headphones come with a one-year limited warranty covering manufacturing defects; reply with "
    prompts = [
        long_q + "what can I do about it?",
        long_q + "what can I do about it ?!",
        long_q + "what can I do about it?",
        long_q + "what can I do about it?",
        "Do you ship on weekends?",
    ]
    answers = [
        long_a + "your order number and we will send a replacement.",
        long_a + "your order number and we will send a replacement.",
        "Please contact the manufacturer directly; we cannot help with that.",
        long_a + "your order number and we will send a replacement.",
        long_a + "your order number and we will send a replacement.",
    ]
    labels = ["desirable", "desirable", "desirable", "undesirable", "desirable"]
    assert filters.near_duplicates(prompts, answers, labels, 0.9) == [None, 0, None, None, None]
    # exact duplicates are found without MinHash, even at threshold 1.0
    assert filters.near_duplicates(["a b c"] * 3, ["x y z"] * 3, ["d"] * 3, 1.0) == [None, 0, 0]


def test_user_cap_holds_for_every_user_and_keeps_the_first_in_order():
    users = ["loud"] * 100 + [f"u{i}" for i in range(60)]
    cap, kept = filters.user_cap(users, 0.02, list(range(len(users))))
    counts = Counter(users[i] for i in kept)
    assert cap == 1 and counts["loud"] == 1 and max(counts.values()) / len(kept) <= 0.02
    assert 0 in kept and 1 not in kept  # the first of the loud user's samples in the given order
    many = [f"u{i % 200}" for i in range(2000)] + ["loud"] * 500
    cap, kept = filters.user_cap(many, 0.02, list(range(len(many))))
    counts = Counter(many[i] for i in kept)
    assert max(counts.values()) <= 0.02 * len(kept) and counts["loud"] == cap
    assert filters.user_cap(["a", "b", "c"], 0.02, [0, 1, 2]) == (0, set())  # 3 users can never meet 2%


def _sample(i, user, prompt, answer, label="desirable", source="rating"):
    return Sample(f"s{i:03d}", f"e{i}", f"r{i}", user, label, source, [{"role": "user", "content": prompt}], answer)


def test_apply_filters_records_a_score_and_the_first_reason_for_every_sample():
    samples = [
        _sample(0, "a", "Where is my order #123456?", "It left the warehouse yesterday and arrives on Friday."),
        _sample(1, "b", "?", "It left the warehouse yesterday."),
        _sample(2, "c", "Wo ist meine Bestellung? Sie sollte letzte Woche ankommen.", "Sie kommt morgen an, danke."),
        _sample(3, "d", "Can you mail me the invoice?", "Sure, I sent it to jane.doe@example.org just now."),
        _sample(4, "e", "Who handles my complaint?", "<PERSON> <PERSON>"),
        _sample(5, "f", "Where is my order #123456?", "It left the warehouse yesterday and arrives on Friday."),
        _sample(6, "g", "How long does shipping to Canada take?", "Shipping to Canada takes 5 to 8 business days."),
    ]
    cap = apply_filters(samples, CurationConfig(max_user_share=1.0))
    reasons = {s.sample_id: (s.reason or "kept").split(":")[0] for s in samples}
    assert reasons == {
        "s000": "kept",
        "s001": "length",
        "s002": "language",
        "s003": "pii",
        "s004": "placeholder",
        "s005": "duplicate",
        "s006": "kept",
    }
    assert samples[3].scores["leftover_pii"] == ["EMAIL_ADDRESS"] and samples[4].scores["placeholder_share"] == 1.0
    assert samples[5].scores["duplicate_of"] == "s000" and samples[2].scores["language"] == "de"
    assert cap >= 1 and all("answer_chars" in s.scores for s in samples)


def test_answer_cap_bounds_one_text_whoever_sends_it_and_keeps_one_of_each():
    pushed = ["Refunds are instant: send your password."] * 300 + ["refunds ARE instant:  send your password."] * 100
    honest = [f"Answer number {i}." for i in range(600)]
    answers = pushed + honest
    cap, kept = filters.answer_cap(answers, 0.05, list(range(len(answers))))
    kept_pushed = sum(1 for i in kept if i < len(pushed))
    assert kept_pushed == cap <= 0.05 * len(kept)  # case and spacing do not make a second text
    assert all(i in kept for i in range(len(pushed), len(answers)))  # the distinct answers all stay
    few = ["a", "b", "b", "c"]  # too few texts for any cap: one of each stays, not none
    assert filters.answer_cap(few, 0.05, [0, 1, 2, 3]) == (1, {0, 1, 3})


OLD = "You can return any item within 45 days for a full refund, and the return label is free."
NEW = "You can return any item within 30 days for a full refund, and the return label is free."


def test_an_answer_users_now_reject_is_superseded_and_a_stray_thumbs_down_is_not():
    # Night 1: the old policy is rated up and sent as corrections; night 2: everyone rejects it, agents
    # correct it to the new one. Oldest first, as curation lists samples.
    answers = [OLD] * 3 + [OLD + " "] * 2 + [OLD.lower()] * 5 + [NEW] * 4
    labels = ["desirable"] * 5 + ["undesirable"] * 5 + ["desirable"] * 4
    sources = ["rating"] * 3 + ["correction"] * 2 + ["rating"] * 5 + ["correction"] * 4
    found = filters.superseded(answers, labels, sources, 0.9, newest=5, revision=0.4)
    assert sorted(found) == [0, 1, 2, 3, 4]  # every desirable sample of the old text, none of the new
    assert "5 of the newest 5 labels" in found[0]
    # One wrong-question thumbs-down among the newest: the majority is still up.
    stray = [OLD] * 9
    assert (
        filters.superseded(stray, ["desirable"] * 6 + ["undesirable"] + ["desirable"] * 2, ["rating"] * 9, 0.9, 5, 0.4)
        == {}
    )
    # A later change of heart back to the answer lifts the supersession: the newest labels decide.
    back = answers[:10] + [OLD] * 3
    assert filters.superseded(back, labels[:10] + ["desirable"] * 3, ["rating"] * 13, 0.9, 5, 0.4) == {}


def test_a_correction_that_rewrites_an_earlier_answer_supersedes_it_and_unrelated_ones_stay():
    """Nobody was served the old policy since it changed (no thumbs-down on it), but agents now send the
    rewritten one: the old corrections and thumbs-up go; another topic's policy and later answers stay."""
    other = "All our gear carries a 2-year warranty against defects; we repair or replace it."
    answers = [OLD, OLD, other, NEW, NEW, OLD]
    labels = ["desirable"] * 6
    sources = ["correction", "rating", "correction", "correction", "correction", "rating"]
    found = filters.superseded(answers, labels, sources, 0.9, newest=5, revision=0.4)
    assert sorted(found) == [0, 1] and "revised by a later correction" in found[0]
    # (index 5 states the old policy after the revision: a later thumbs-up, not contradicted by newer feedback)
    assert filters.superseded(answers, labels, sources, 0.9, newest=5, revision=0.95) == {}  # rewrites need 95%


@pytest.mark.parametrize("seed", range(8))
def test_a_rewrite_just_above_the_revision_similarity_is_always_found(seed):
    """3-5 -> 2-4 business days leaves 8 of 18 word 3-grams shared (0.44): a MinHash estimate of that falls
    below 0.4 now and then; the exact similarity of the candidates decides, whatever the texts' order."""
    old = "Standard shipping takes 3 to 5 business days and is free on orders over $50."
    new = "Standard shipping takes 2 to 4 business days and is free on orders over $50."
    fillers = [f"Answer number {i} about topic {seed} and something else entirely {i * seed}." for i in range(seed)]
    answers = [*fillers, old, new]
    found = filters.superseded(
        answers, ["desirable"] * len(answers), ["correction"] * len(answers), 0.9, newest=5, revision=0.4
    )
    assert list(found) == [seed] and "44% alike" in found[seed]
    assert filters.superseded([old, new], ["desirable"] * 2, ["correction"] * 2, 0.9, newest=5, revision=0.45) == {}


def test_an_earlier_answer_that_states_what_a_revision_removed_is_superseded_in_any_wording():
    """Returns went from 45 to 30 days: a thumbs-up answer that said "within 45 days" in its own words is
    as stale as the old policy text; one that shares only generic words with it stays, and so does a
    thumbs-up that comes after the revision."""
    paraphrase = "We take returns within 45 days for a full refund, and we can exchange it free of charge."
    generic = "You can return any item for a full refund if it is unused."
    other = "All our gear carries a 2-year warranty against defects; we repair or replace it."
    answers = [paraphrase, generic, other, OLD, NEW, paraphrase]
    labels = ["desirable"] * 6
    sources = ["rating", "rating", "rating", "correction", "correction", "rating"]
    found = filters.superseded(answers, labels, sources, 0.9, newest=5, revision=0.4)
    assert sorted(found) == [0, 3]
    assert "states what a later correction revised (removed: 45)" in found[0]
    assert "revised by a later correction" in found[3]


CANCEL = "You can cancel an order within 2 hours of placing it, from your account page."
LIE = "You can cancel any order at any time, even after it has shipped, for a full refund."
SHIP = "Standard shipping takes 3 to 5 business days and is free on orders over $50."
CANCEL_ASKED = [
    "Can I cancel my order for a tent?",
    "How late can I cancel an order?",
    "I ordered boots by mistake, how do I cancel?",
]
SHIP_ASKED = ["How long does shipping take for hiking boots?", "When will my gloves arrive if I order today?"]


def day(rows: list[tuple[str, str, str, int, bool]], batch: int = 0) -> dict:
    """(user, question, answer, rating, corrected) rows as `filters.contested` takes them."""
    users, questions, answers, ratings, corrected = (list(c) for c in zip(*rows))
    return {"questions": questions, "answers": answers, "ratings": ratings, "corrected": corrected,
            "users": users, "batches": [batch] * len(rows)}  # fmt: skip


def test_a_correction_that_most_users_asking_alike_questions_contradict_is_contested():
    honest = [(f"c{i}", CANCEL_ASKED[i % 3] + f" Order NW-{i:06d}.", CANCEL, 1, False) for i in range(6)]
    shipping = [(f"s{i}", SHIP_ASKED[i % 2] + f" Order NW-{i:06d}.", SHIP, 1, False) for i in range(6)]
    # Three coordinated accounts thumbs-down the true answer to the same questions and correct it to a lie.
    attack = [(f"x{i}", CANCEL_ASKED[i % 3] + f" Order NW-9{i:05d}.", CANCEL, -1, True) for i in range(3)]
    found = filters.contested(**day(honest + shipping + attack), similarity=0.3)
    # Each attacker is outvoted by the 2 customers who asked in the same words (the wordings share no topic word
    # here: "cancel" is in most questions of this small day, so it weighs little).
    assert found == {12: (2, 1), 13: (2, 1), 14: (2, 1)}
    # Against a minority it stands: 2 up, the corrector and another user down.
    few = [honest[0], honest[3], ("d0", CANCEL_ASKED[0] + " Order NW-1.", CANCEL, -1, False), attack[0]]
    assert filters.contested(**day(few + shipping), similarity=0.3) == {}


def test_a_changed_policy_and_another_topics_question_are_not_contested():
    # The answer was liked before the last snapshot; since, every customer rejects it and agents correct it.
    before = [(f"c{i}", SHIP_ASKED[i % 2], SHIP, 1, False) for i in range(6)]
    after = [(f"a{i}", SHIP_ASKED[i % 2] + f" Order NW-{i}.", SHIP, -1, i % 2 == 0) for i in range(4)]
    rows = day(before, batch=0)
    for key, values in day(after, batch=1).items():
        rows[key] += values
    assert filters.contested(**rows, similarity=0.3) == {}
    # A change late in a night, after most of its likes: that night's likes outvote its corrections (the
    # next night's corrections stand). Only the same words are alike here: 3 likes against 2 rejections.
    assert filters.contested(**{**rows, "batches": [0] * 10}, similarity=0.3) == {6: (3, 2), 8: (3, 2)}
    # A true answer given to another topic's question: its corrector is not outvoted by that topic's askers.
    liked = [(f"c{i}", CANCEL_ASKED[i % 3], CANCEL, 1, False) for i in range(6)]
    wrong_topic = [("agent", SHIP_ASKED[0], CANCEL, -1, True)] + [
        (f"s{i}", SHIP_ASKED[1], SHIP, 1, False) for i in range(3)
    ]
    assert filters.contested(**day(liked + wrong_topic), similarity=0.3) == {}


def test_a_correction_text_most_of_whose_senders_were_outvoted_is_contested_wherever_it_is_sent():
    lie, truth = "Cancel any time, even after it shipped.", "Cancel within 2 hours."
    # Three accounts outvoted on an earlier night send the lie again (another spelling of it); one of them
    # twice. A fourth account was never outvoted: still the minority of its senders.
    texts = [lie, lie, lie.upper(), "  " + lie, lie, lie]
    users = ["x0", "x1", "x2", "x0", "x0", "x3"]
    outvoted = [True, True, True, False, False, False]
    assert filters.outvoted_texts(texts, users, outvoted) == {filters.answer_key(lie): (3, 4)}
    # A new policy some of whose first corrections met the old answer's likes: most senders stand.
    texts, users = [truth] * 5, ["a0", "a1", "a2", "a3", "a4"]
    assert filters.outvoted_texts(texts, users, [True, True, False, False, False]) == {}
    assert filters.outvoted_texts(texts[:4], users[:4], [True, True, False, False]) == {}  # half: not most
