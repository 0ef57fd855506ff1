#!/usr/bin/env python3
"""Plots a `switchboard bench soak` report (JSON) as an SVG with three panels over time: server memory and
descriptors, sessions and rooms, and latency percentiles (call→accept and relay, p50 and p99). Plain SVG written
here, so that no plotting library is needed.
    python3 bench/plot_soak.py bench/results/soak.json docs/soak.svg"""
import json, sys

W, H, L, R, T, B = 900, 210, 70, 130, 30, 30  # panel size and margins

def panel(y0, title, samples, series, unit):
    """One panel: series is [(label, colour, [values]), ...] on one y axis from 0."""
    xs = [s["t_s"] for s in samples]
    top = max([v for _, _, vals in series for v in vals if v is not None] + [1e-9]) * 1.1
    xmax = max(xs) if xs else 1
    px = lambda x: L + (W - L - R) * x / xmax
    py = lambda v: y0 + T + (H - T - B) * (1 - v / top)
    out = [f'<text x="{L}" y="{y0 + 18}" font-size="14" font-weight="bold">{title}</text>']
    out.append(f'<rect x="{L}" y="{y0 + T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#999"/>')
    for i in range(5):
        v = top * i / 4
        out.append(f'<text x="{L - 6}" y="{py(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.3g}</text>')
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>')
    for i in range(6):
        x = xmax * i / 5
        out.append(f'<text x="{px(x):.1f}" y="{y0 + H - 12}" font-size="11" text-anchor="middle">{x:.0f} s</text>')
    out.append(f'<text x="{L - 50}" y="{y0 + T - 8}" font-size="11">{unit}</text>')
    for k, (label, colour, vals) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in zip(xs, vals) if v is not None)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        ly = y0 + T + 14 + 16 * k
        out.append(f'<line x1="{W - R + 10}" x2="{W - R + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{W - R + 34}" y="{ly}" font-size="11">{label}</text>')
    return out

def main(src, dst):
    r = json.load(open(src))
    s = r["samples"]
    get = lambda k, f=lambda v: v: [None if x.get(k) is None else f(x[k]) for x in s]
    lat = lambda k, q: [x[k].get(q) for x in s]
    body = []
    body += panel(0, "Server memory and descriptors", s,
                  [("RSS (MiB)", "#1f77b4", get("rss_kib", lambda v: v / 1024)),
                   ("open fds / 100", "#ff7f0e", get("fds", lambda v: v / 100))], "")
    body += panel(H, "Sessions, rooms and runtime tasks (server gauges)", s,
                  [("sessions", "#2ca02c", get("sessions")), ("rooms", "#9467bd", get("rooms")),
                   ("runtime tasks", "#bcbd22", get("tasks"))], "")
    body += panel(2 * H, "Latency per 10 s interval", s,
                  [("call→accept p50", "#8c564b", lat("call_to_accept", "p50_ms")),
                   ("call→accept p99", "#d62728", lat("call_to_accept", "p99_ms")),
                   ("relay p50", "#7f7f7f", lat("relay", "p50_ms")),
                   ("relay p99", "#17becf", lat("relay", "p99_ms"))], "ms")
    summary = (f'{r["connections"]} connections for {r["duration_s"]:.0f} s: {r["flows"]} call flows, '
               f'{r["relay_received"]}/{r["relay_sent"]} relayed (lost {r["relay_lost"]}, out of order '
               f'{r["relay_out_of_order"]}), {r["churned_sessions"]} churned sessions, {r["errors"]} errors, '
               f'leaked rooms {r["leaked_rooms"]} of {r["rooms_checked"]}')
    body.append(f'<text x="{L}" y="{3 * H + 18}" font-size="12">{summary}</text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{3 * H + 30}" font-family="sans-serif">'
           f'<rect width="100%" height="100%" fill="white"/>' + "".join(body) + "</svg>\n")
    open(dst, "w").write(svg)

if __name__ == "__main__":
    main(*sys.argv[1:3])
