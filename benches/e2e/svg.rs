//! A tiny SVG line chart: throughput against connections, one panel per
//! workload, one line per path. Hand-written to keep the bench's build free of
//! a plotting stack.

use std::fmt::Write as _;

pub struct Series {
    pub label: String,
    pub colour: &'static str,
    /// (connections, ops/s)
    pub points: Vec<(usize, f64)>,
}

pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

const W: f64 = 360.0;
const H: f64 = 260.0;
const ML: f64 = 64.0;
const MR: f64 = 12.0;
const MT: f64 = 28.0;
const MB: f64 = 44.0;

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * mag)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Panels side by side; the x axis is log2 of the connection count.
pub fn chart(title: &str, panels: &[Panel]) -> String {
    let total_w = W * panels.len().max(1) as f64;
    let total_h = H + 40.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" viewBox="0 0 {total_w} {total_h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="16" text-anchor="middle" font-size="13">{}</text>"#,
        total_w / 2.0,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        panel(&mut s, p, i as f64 * W, 20.0);
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel, x0: f64, y0: f64) {
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = p
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(c, _)| c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ymax = nice_ceiling(
        p.series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(_, y)| y))
            .fold(0.0, f64::max),
    );
    let (lx, rx) = (x0 + ML, x0 + W - MR);
    let (ty, by) = (y0 + MT, y0 + H - MB);
    let lmin = xs.first().map_or(0.0, |&c| (c as f64).log2());
    let lmax = xs.last().map_or(1.0, |&c| (c as f64).log2());
    let px = |c: usize| {
        if lmax > lmin {
            lx + ((c as f64).log2() - lmin) / (lmax - lmin) * (rx - lx)
        } else {
            (lx + rx) / 2.0
        }
    };
    let py = |v: f64| by - v / ymax * (by - ty);
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="12">{}</text>"#,
        (lx + rx) / 2.0,
        ty - 8.0,
        esc(&p.title)
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let y = py(v);
        let _ = write!(
            s,
            r##"<line x1="{lx}" y1="{y}" x2="{rx}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            lx - 4.0,
            y + 4.0,
            if v >= 1000.0 {
                format!("{:.0}k", v / 1000.0)
            } else {
                format!("{v:.0}")
            }
        );
    }
    for &c in &xs {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{c}</text>"#,
            px(c),
            by + 14.0
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">connections</text><text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">ops/s</text>"#,
        (lx + rx) / 2.0,
        by + 30.0,
        x0 + 14.0,
        (ty + by) / 2.0,
        x0 + 14.0,
        (ty + by) / 2.0
    );
    let _ = write!(
        s,
        r#"<line x1="{lx}" y1="{by}" x2="{rx}" y2="{by}" stroke="black"/><line x1="{lx}" y1="{ty}" x2="{lx}" y2="{by}" stroke="black"/>"#
    );
    for (k, se) in p.series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(c, v)| format!("{:.1},{:.1}", px(c), py(v)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            se.colour,
            pts.join(" ")
        );
        for &(c, v) in &se.points {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(c),
                py(v),
                se.colour
            );
        }
        let ly = ty + 4.0 + 14.0 * k as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="3" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            lx + 8.0,
            ly,
            se.colour,
            lx + 22.0,
            ly + 4.0,
            esc(&se.label)
        );
    }
}
