"""The prompt-following benchmark: a fixed prompt set, scored by the analyzer."""

import collections

import pytest

from t2i.data.shapes import COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, WHERE, Scene, ShapeSpec, draw_scene
from t2i.data.shapes_prompts import score_scene, shapes_prompt_set
from t2i.evaluation import compare_cfgs, prompt_accuracy

PLACE = {text: position for position, text in WHERE.items()}


def scene_of(prompt: str) -> Scene:
    """The scene a prompt of `shapes_prompt_set` asks for, on a background unlike its colour."""
    words = prompt.split()
    size, colour, shape, where = words[1], words[2], words[3], " ".join(words[4:])
    background = "gray" if colour in ("white", "black") else "white"
    return Scene(background, (ShapeSpec(colour, shape, size, PLACE[where]),))


class DrawingPipe:
    """A stand-in pipeline that draws each prompt exactly (or, with `always`, one fixed scene)."""

    def __init__(self, always: Scene | None = None):
        self.always, self.seeds = always, []

    def settings(self, **settings):
        return {"cfg": 2.0 if settings.get("cfg") is None else settings["cfg"]}

    def __call__(self, prompt, cfg=None, seed=0, progress=False, **options):
        self.seeds.extend(seed)
        return [draw_scene(self.always or scene_of(p), 32) for p in prompt]


def test_the_prompt_set_covers_every_pair_position_and_size_evenly():
    cases = shapes_prompt_set(prompts_per_pair=5)
    pairs = collections.Counter((c.expected["colour"], c.expected["shape"]) for c in cases)
    assert set(pairs) == {(c, s) for c in COLOURS for s in SHAPES} and set(pairs.values()) == {5}
    assert {(c.expected["colour"], c.expected["shape"]) for c in cases if c.group == "held-out"} == HELD_OUT
    places = collections.Counter((c.expected["position"], c.expected["size"]) for c in cases)
    assert len(places) == len(POSITIONS) * len(SIZES) and max(places.values()) - min(places.values()) <= 1
    assert shapes_prompt_set() == shapes_prompt_set()


def test_a_perfect_drawer_scores_one_and_seeds_repeat_per_prompt():
    pipe = DrawingPipe()
    report = prompt_accuracy(pipe, shapes_prompt_set(), images_per_prompt=2, seed=10, batch_size=7, progress=False)
    assert report.cfg == 2.0
    for group, count in (("seen", 40), ("held-out", 8)):
        assert report.images[group] == 2 * count
        assert all(value == 1.0 for value in report.accuracy[group].values()), report.accuracy[group]
    assert collections.Counter(pipe.seeds) == {10: 48, 11: 48}


def test_a_comparison_of_cfgs_is_one_table_with_a_row_per_group_and_cfg():
    pipe = DrawingPipe()
    comparison = compare_cfgs(pipe, shapes_prompt_set(), cfgs=[1, 4.5], images_per_prompt=1, progress=False)
    assert [report.cfg for report in comparison.reports] == [1, 4.5]
    lines = str(comparison).splitlines()
    assert lines[0].split() == ["group", "cfg", "images", "colour", "shape", "size", "position", "count", "all"]
    for line, (group, report) in zip(lines[1:], [(g, r) for g in ("seen", "held-out") for r in comparison.reports]):
        assert line.split() == [group, f"{report.cfg:g}", str(report.images[group])] + ["100.0%"] * 6
    assert len(lines) == 5 and str(comparison.reports[0]) == "\n".join(lines[:2] + lines[3:4])


def test_a_drawer_that_ignores_its_prompt_scores_at_chance():
    red_circle = Scene("white", (ShapeSpec("red", "circle", "large", "left"),))
    cases = shapes_prompt_set()
    report = prompt_accuracy(DrawingPipe(red_circle), cases, images_per_prompt=1, progress=False)
    seen = [c for c in cases if c.group == "seen"]
    for attribute, value in (("colour", "red"), ("shape", "circle"), ("position", "left"), ("size", "large")):
        expected = sum(c.expected[attribute] == value for c in seen) / len(seen)
        assert report.accuracy["seen"][attribute] == pytest.approx(expected)
    assert report.accuracy["seen"]["count"] == 1.0


def test_score_scene_judges_each_attribute_and_counts_objects():
    expected = {"colour": "blue", "shape": "square", "size": "small", "position": "top"}
    right = ShapeSpec("blue", "square", "small", "top")
    wrong_colour = ShapeSpec("green", "square", "small", "top")
    assert all(score_scene(Scene("white", (right,)), expected).values())
    scores = score_scene(Scene("white", (wrong_colour,)), expected)
    assert not scores["colour"] and scores["shape"] and not scores["all"]
    scores = score_scene(Scene("white", (right, ShapeSpec("red", "circle", "large", "bottom"))), expected)
    assert scores["colour"] and not scores["count"] and not scores["all"]
    assert not any(score_scene(Scene("white", ()), expected).values())
