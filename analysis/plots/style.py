"""Shared look of the figures: one colour per stem, stable colours per group, group labels, axes
that read well (whole-number epoch ticks, uncrowded log axes) and titles that fit their panel."""

import math
import textwrap
from collections.abc import Hashable, Iterable, Sequence

import pandas as pd
import plotly.colors

from analysis.errors import ConfigError
from analysis.names import colour_key, stem_of_label

PALETTE: list[str] = list(plotly.colors.qualitative.D3)
DIVERGED_COLOR = "black"
TEMPLATE = "plotly_white"

# One colour per stem in every figure (ViT_P orange, ViT_C blue); a second model with the same stem
# gets a shade of it. Keys that name no stem take the palette's other colours in turn.
STEM_COLORS = {
    "patchify": PALETTE[1],
    "conv": PALETTE[0],
    "patchify_bn": PALETTE[3],
    "conv_ln": PALETTE[2],
    "cct": PALETTE[4],
    "cnn": PALETTE[7],
}
OTHER_COLORS = [c for c in PALETTE if c not in STEM_COLORS.values()]


def group_label(key: Hashable) -> str:
    """Return a display label for a group key (a value or a tuple of values)."""
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


def head_stems(df: pd.DataFrame, by: str | Sequence[str]) -> dict[Hashable, str]:
    """{group head: colour key} from the frame's `stem` column (a CNN preset: "cnn"): the values of
    the first `by` column whose rows share one stem. Empty when the frame has no stem column."""
    if "stem" not in df.columns or df.empty:
        return {}
    head = [by] if isinstance(by, str) else list(by)
    keys = [colour_key(s, p) for s, p in zip(df["stem"], df["preset"] if "preset" in df.columns else [None] * len(df))]
    out = {}
    for value, stems in pd.Series(keys, index=df.index).groupby(df[head[0]], sort=False):
        found = set(stems.dropna())
        if len(found) == 1:
            out[value] = found.pop()
    return out


def shade(color: str, k: int) -> str:
    """Return the k-th shade of a "#rrggbb" colour: itself, then darker and lighter in turn."""
    if k == 0:
        return color
    r, g, b = plotly.colors.hex_to_rgb(color)
    step = (k + 1) // 2
    if k % 2:  # darker
        f = 0.7**step
        r, g, b = (round(v * f) for v in (r, g, b))
    else:  # lighter
        f = 1 - 0.6**step
        r, g, b = (round(v + (255 - v) * f) for v in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


def color_map(keys: Iterable[Hashable], stems: dict[Hashable, str] | None = None) -> dict[Hashable, str]:
    """Return {key: colour}: the colour of the key's stem (a shade of it for the second and later
    keys of one stem), else the palette's other colours in the order the keys are given.

    `stems` ({key: stem}, e.g. `head_stems` of the frame) gives the stem from the frame's `stem`
    column; keys it lacks take the stem their label names (`names.stem_of_label`).

    Build it once from the full frame and pass it to the figure builders so a group
    keeps its colour when others are filtered away.
    """
    out, per_stem, others = {}, {}, 0
    for key in dict.fromkeys(keys):
        stem = stems[key] if stems and key in stems else stem_of_label(group_label(key))
        if stem not in STEM_COLORS:
            out[key] = OTHER_COLORS[others % len(OTHER_COLORS)]
            others += 1
        else:
            out[key] = shade(STEM_COLORS[stem], per_stem.get(stem, 0))
            per_stem[stem] = per_stem.get(stem, 0) + 1
    return out


def with_alpha(color: str, alpha: float) -> str:
    """Return `color` ("#rrggbb" or "rgb(r, g, b)") as an rgba string with the given opacity."""
    if color.startswith("#"):
        r, g, b = plotly.colors.hex_to_rgb(color)
    elif color.startswith("rgb("):
        r, g, b = plotly.colors.unlabel_rgb(color)
    else:
        raise ConfigError(f"colour {color!r} must be '#rrggbb' or 'rgb(r, g, b)'")
    return f"rgba({int(r)}, {int(g)}, {int(b)}, {alpha})"


DASHES: list[str] = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]


def split_key(key: Hashable) -> tuple[Hashable, tuple]:
    """Return (head, tail) of a group key: head picks the colour, tail the dash."""
    if isinstance(key, tuple):
        return key[0], tuple(key[1:])
    return key, ()


def style_maps(
    keys: Iterable[Hashable], stems: dict[Hashable, str] | None = None
) -> tuple[dict[Hashable, str], dict[tuple, str]]:
    """Return ({head: colour}, {tail: dash}) for group keys, in the order given; `stems` as in color_map."""
    keys = list(keys)
    colors = color_map((split_key(k)[0] for k in keys), stems)
    tails = dict.fromkeys(split_key(k)[1] for k in keys)
    return colors, {t: DASHES[i % len(DASHES)] for i, t in enumerate(tails)}


def group_styles(
    keys: Iterable[Hashable],
    colors: dict[Hashable, str] | None = None,
    dashes: dict[tuple, str] | None = None,
    stems: dict[Hashable, str] | None = None,
) -> dict[Hashable, tuple[str, str]]:
    """Return {key: (colour, dash)}: colour by the key's first value, dash by the rest.

    `colors` / `dashes` (from `style_maps` on a fuller set of keys) keep styles stable
    across filtered frames; values they lack get their own stem colour or the next free dash.
    """
    keys = list(keys)
    own_colors, own_dashes = style_maps(keys, stems)
    colors = dict(colors or {})
    dashes = dict(dashes or {})
    for head in own_colors:
        colors.setdefault(head, own_colors[head])
    for tail in own_dashes:
        dashes.setdefault(tail, DASHES[len(dashes) % len(DASHES)])
    return {k: (colors[split_key(k)[0]], dashes[split_key(k)[1]]) for k in keys}


# ---------------------------------------------------------------- axes and titles


def integer_ticks(high: float, most: int = 10) -> dict:
    """Axis settings with ticks on whole numbers only (epochs), at most about `most` of them up to
    `high`: a step of 1, 2, 5, 10, 20, 50, ..."""
    step = 1
    while high / step > most:
        step *= 2.5 if str(step)[0] == "2" else 2
        step = int(step)
    return dict(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def _tick_text(v: float) -> str:
    return f"{v:g}" if 1e-3 <= v < 1e4 else f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


def log_ticks(low: float, high: float, most: int = 6) -> dict:
    """Log-axis settings with a few labelled ticks over [low, high], every label a full number:
    1, 2 and 5 of each decade, thinned to decades on wide ranges and refined on narrow ones
    (plotly's defaults label the minor digits alone, which crowd narrow panels and cannot be read
    on ranges without a decade)."""
    if not (low > 0 and high >= low):
        return {}
    lo, hi = low / 1.25, high * 1.25  # the markers' padding
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = []
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 6, 8), (1, 2, 5), (1, 3), (1,)):  # finest first
        ticks = [m * 10.0**k for k in decades for m in mantissas if lo <= m * 10.0**k <= hi]
        if len(ticks) <= most:
            break
    while len(ticks) > most:  # very wide ranges: every other decade
        ticks = ticks[::2]
    return dict(tickvals=ticks, ticktext=[_tick_text(t) for t in ticks])


def wrap_title(text: str, width_px: float, font_px: float = 14) -> str:
    """Return `text` broken into lines (plotly "<br>") that fit `width_px` at `font_px` (an
    average glyph is taken as 0.6 of the font size)."""
    chars = max(8, int(width_px / (0.6 * font_px)))
    return "<br>".join(textwrap.wrap(text, chars, break_on_hyphens=False)) if len(text) > chars else text


NOTEBOOK_WIDTH = 940  # px a figure gets in a notebook cell at the 1,000 px notebook width
