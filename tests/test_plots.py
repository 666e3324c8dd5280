"""The plotting helpers: lines cut at the edge of the plotting area, distinct colours."""

from t2i.plots import _COLOURS, _clip_y, line_plot


def test_clip_y_keeps_inside_and_cuts_at_the_edges():
    assert _clip_y((0, 50), (10, 60), top=30, bottom=350) == [(0, 50), (10, 60)]
    assert _clip_y((0, 10), (10, 20), top=30, bottom=350) is None  # wholly above the area
    # from y = 130 up to y = -70: crosses the top (y = 30) halfway in y, so at x = 5
    assert _clip_y((0, 130), (10, -70), top=30, bottom=350) == [(0, 130), (5.0, 30)]
    assert _clip_y((0, 400), (10, 300), top=30, bottom=350) == [(5.0, 350), (10, 300)]


def test_line_plot_y_max_cuts_an_outlier_and_colours_differ():
    series = {f"s{i}": ([1, 10, 100], [100 + i, 50, 40]) for i in range(9)}
    series["outlier"] = ([1, 10, 100], [1000, 45, 40])
    image = line_plot(series, "t", "x", "y", log_x=True, y_max=120, markers=True)
    outlier = _COLOURS[9]
    pixels = image.load()
    width, height = image.size
    rows_with_outlier = [y for y in range(height) for x in range(width - 160) if pixels[x, y] == outlier]
    assert rows_with_outlier, "the outlier's line is drawn below the cut"
    assert min(rows_with_outlier) >= 30, "nothing is drawn above the plotting area"
    assert len(set(_COLOURS)) == len(_COLOURS) == 10
