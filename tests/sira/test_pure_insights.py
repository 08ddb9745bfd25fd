"""Recommendation text and each suggestion kind on crafted summaries."""

from dataclasses import replace

from sira.insights import SegmentSummary, VariantSummary, recommendation, suggestions
from sira.posterior import prob_beat_control
from sira.stats import required_sample_size

BLUE = VariantSummary(
    "Control (Blue)", {"button_color": "blue", "copy": "Pay"}, True, 10000, 710, 0.0001
)
GREEN = VariantSummary(
    "Green Button", {"button_color": "green", "copy": "Pay"}, False, 10000, 850, 0.9999
)


def kinds(found):
    return [s["kind"] for s in found]


def test_recommendation_uses_the_seed_wording():
    text = recommendation([BLUE, GREEN])
    assert text.startswith("Variant 'Green Button' is currently leading with 8.50% conversion")
    assert "100.0%" in text


def test_recommendation_names_the_metric():
    assert "8.50% click" in recommendation([BLUE, GREEN], metric="click")


def test_recommendation_without_enough_data():
    small = VariantSummary("New", {}, False, 37, 3, 0.6)
    assert recommendation([BLUE, small]).startswith("Not enough data yet")
    assert "37" in recommendation([BLUE, small])
    assert recommendation([]) == "No variants to analyse yet."


def test_roll_out_and_iterate_names_the_changed_keys():
    found = suggestions([BLUE, GREEN])
    assert kinds(found) == ["roll_out_and_iterate"]
    roll_out = found[0]
    assert roll_out["variant"] == "Green Button"
    assert roll_out["changed_config"] == {"button_color": {"control": "blue", "variant": "green"}}
    assert "button_color" in roll_out["detail"] and "'green'" in roll_out["detail"]
    assert "copy" not in roll_out["detail"]


def test_no_roll_out_on_a_posterior_win_that_peeking_could_have_made():
    # P(best) 0.98 at one look is not enough: the always-valid bound on the gap is below 0
    lucky = [replace(BLUE, users=1000, successes=71), replace(GREEN, users=1000, successes=85, prob_best=0.98)]
    assert "roll_out_and_iterate" not in kinds(suggestions(lucky))
    confirmed = [lucky[0], replace(lucky[1], always_valid_lower=0.001)]
    assert "roll_out_and_iterate" in kinds(suggestions(confirmed))


def test_no_roll_out_when_the_control_wins_or_nobody_is_sure():
    control_wins = [replace(BLUE, prob_best=0.97), replace(GREEN, prob_best=0.03)]
    assert "roll_out_and_iterate" not in kinds(suggestions(control_wins))
    unsure = [replace(BLUE, prob_best=0.4), replace(GREEN, prob_best=0.6)]
    assert "roll_out_and_iterate" not in kinds(suggestions(unsure))


def test_extend_says_how_many_more_users_a_ten_percent_uplift_needs():
    variants = [
        VariantSummary("Control", {"price": 10}, True, 2000, 200, 0.45),
        VariantSummary("Cheaper", {"price": 9}, False, 1800, 185, 0.55),
    ]
    found = suggestions(variants)
    assert kinds(found) == ["extend_or_cut"]
    required = required_sample_size(0.10, 0.10)
    assert found[0]["required_users_per_arm"] == required
    assert found[0]["additional_users_per_arm"] == required - 1800
    assert f"{required - 1800:,} more per arm" in found[0]["detail"]
    assert found[0]["cut"] == []


def test_cut_arms_that_cannot_win_when_more_than_two():
    variants = [
        VariantSummary("Control", {"promo": "none"}, True, 20000, 2000, 0.40),
        VariantSummary("10% off", {"promo": "10"}, False, 20000, 2010, 0.595),
        VariantSummary("Free shipping", {"promo": "ship"}, False, 20000, 1700, 0.004),
        VariantSummary("Bundle", {"promo": "bundle"}, False, 20000, 1710, 0.001),
    ]
    found = suggestions(variants)
    assert kinds(found) == ["extend_or_cut"]
    assert found[0]["cut"] == ["Free shipping", "Bundle"]
    assert "'Free shipping', 'Bundle' have less than a 1% chance" in found[0]["detail"]
    # Two arms (and enough users): never suggest cutting, even a hopeless arm.
    assert suggestions(variants[:1] + variants[2:3]) == []


def test_extend_without_any_conversions_yet_gives_no_number():
    variants = [
        VariantSummary("Control", {}, True, 500, 0, 0.5),
        VariantSummary("B", {}, False, 500, 0, 0.5),
    ]
    assert suggestions(variants) == []


def test_targeted_follow_up_when_a_variant_wins_in_one_country_only():
    segments = [
        SegmentSummary("country", "SN", "Control (Blue)", 3000, 210),
        SegmentSummary("country", "SN", "Green Button", 3000, 300),
        SegmentSummary("country", "FR", "Control (Blue)", 3000, 240),
        SegmentSummary("country", "FR", "Green Button", 3000, 228),
        SegmentSummary("country", "CI", "Control (Blue)", 40, 3),  # too small
        SegmentSummary("country", "CI", "Green Button", 40, 0),
        SegmentSummary("lang", "fr", "Control (Blue)", 6000, 450),
        SegmentSummary("lang", "fr", "Green Button", 6000, 528),
    ]
    variants = [
        VariantSummary("Control (Blue)", {"button_color": "blue"}, True, 6000, 450, 0.1),
        VariantSummary("Green Button", {"button_color": "green"}, False, 6000, 528, 0.9),
    ]
    found = suggestions(variants, segments)
    assert kinds(found) == ["extend_or_cut", "targeted_follow_up"]  # 6,000 < 14,751 per arm
    targeted = found[1]
    assert targeted["segment_key"] == "country"
    assert list(targeted["winning_values"]) == ["SN"]
    assert list(targeted["losing_values"]) == ["FR"]
    assert targeted["winning_values"]["SN"] == prob_beat_control(211, 2791, 301, 2701)
    assert "country = SN" in targeted["title"]


def test_no_targeted_follow_up_without_a_control():
    segments = [
        SegmentSummary("country", "SN", "A", 3000, 210),
        SegmentSummary("country", "SN", "B", 3000, 300),
        SegmentSummary("country", "FR", "A", 3000, 240),
        SegmentSummary("country", "FR", "B", 3000, 228),
    ]
    variants = [
        VariantSummary("A", {}, False, 6000, 450, 0.1),
        VariantSummary("B", {}, False, 6000, 528, 0.9),
    ]
    assert "targeted_follow_up" not in kinds(suggestions(variants, segments))


def test_no_suggestions_for_no_variants():
    assert suggestions([]) == []


def test_sample_size_advice_for_a_metric_where_fewer_is_better():
    # churn 10% in both arms: successes are the users who stayed
    variants = [
        VariantSummary("Control", {}, True, 2000, 1800, 0.5),
        VariantSummary("Retain", {"offer": True}, False, 2000, 1800, 0.5),
    ]
    found = suggestions(variants, lower_is_better=True)
    advice = next(s for s in found if s["kind"] == "extend_or_cut")
    assert advice["required_users_per_arm"] == required_sample_size(0.10, -0.10)
    assert "reduction" in advice["detail"] and "10.00% base rate" in advice["detail"]
