"""Shared look of the figures: stable colours per group and the group labels."""

from collections.abc import Hashable, Iterable

import plotly.colors

from analysis.errors import ConfigError

PALETTE: list[str] = list(plotly.colors.qualitative.D3)
DIVERGED_COLOR = "black"
TEMPLATE = "plotly_white"


def group_label(key: Hashable) -> str:
    """Return a display label for a group key (a value or a tuple of values)."""
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


def color_map(keys: Iterable[Hashable]) -> dict[Hashable, str]:
    """Return {key: colour}, cycling the palette in the order the keys are given.

    Build it once from the full frame and pass it to the figure builders so a group
    keeps its colour when others are filtered away.
    """
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(dict.fromkeys(keys))}


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


def style_maps(keys: Iterable[Hashable]) -> tuple[dict[Hashable, str], dict[tuple, str]]:
    """Return ({head: colour}, {tail: dash}) for group keys, in the order given."""
    keys = list(keys)
    colors = color_map(split_key(k)[0] for k in keys)
    tails = dict.fromkeys(split_key(k)[1] for k in keys)
    return colors, {t: DASHES[i % len(DASHES)] for i, t in enumerate(tails)}


def group_styles(
    keys: Iterable[Hashable],
    colors: dict[Hashable, str] | None = None,
    dashes: dict[tuple, str] | None = None,
) -> dict[Hashable, tuple[str, str]]:
    """Return {key: (colour, dash)}: colour by the key's first value, dash by the rest.

    `colors` / `dashes` (from `style_maps` on a fuller set of keys) keep styles stable
    across filtered frames; values they lack get the next free palette entries.
    """
    keys = list(keys)
    own_colors, own_dashes = style_maps(keys)
    colors = dict(colors or {})
    dashes = dict(dashes or {})
    for head in own_colors:
        colors.setdefault(head, PALETTE[len(colors) % len(PALETTE)])
    for tail in own_dashes:
        dashes.setdefault(tail, DASHES[len(dashes) % len(DASHES)])
    return {k: (colors[split_key(k)[0]], dashes[split_key(k)[1]]) for k in keys}
