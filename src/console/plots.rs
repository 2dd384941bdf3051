//! The overview's plots, drawn by the server as inline SVG (README,
//! "Console"): pure functions from figures to markup, no I/O.
//!
//! Every plot is an `<svg role="img">` with an `aria-label` and a `<title>`
//! saying what it shows, sized by its `viewBox` alone (the stylesheet makes
//! it as wide as the page), with no script, no `style` attribute (the
//! Content-Security-Policy allows neither) and no reference to anything
//! outside it: colours and strokes come from classes in `console.css`.
//! Labels are maud-escaped text. Each mark carries its figure in `data-*`
//! attributes, so tests read what was drawn without parsing geometry. A
//! plot without data says so in words rather than drawing empty axes.

use maud::{Markup, html};

use crate::domain::Millis;
use crate::store::HOUR_MILLIS;
use crate::telemetry::request_rate::MinuteCount;

/// The `viewBox` width: every plot is drawn on a 640 × 220 canvas.
const WIDTH: f64 = 640.0;
/// The `viewBox` height.
const HEIGHT: f64 = 220.0;
/// Room for the y axis' labels.
const LEFT: f64 = 52.0;
/// Margin right of the plot area.
const RIGHT: f64 = 14.0;
/// Margin above the plot area (labels of marks).
const TOP: f64 = 18.0;
/// Room for the x axis' labels.
const BOTTOM: f64 = 32.0;
/// Width of the plot area.
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
/// Height of the plot area.
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;
/// The y of the x axis (the baseline of bars).
const BASE_Y: f64 = TOP + PLOT_H;

/// A coordinate as written into the SVG: one decimal is finer than any
/// screen shows the 640-wide canvas.
fn n(value: f64) -> String {
    format!("{value:.1}")
}

/// The y axis for values up to `max`: its top and its step, the step a
/// 1, 2, 2.5 or 5 times a power of ten giving four to five ticks, whole
/// when `whole` (counts have no fractions). The top is at least `max`,
/// so no bar is cut off, and at least one step, so a zero series still has
/// an axis.
pub fn nice_axis(max: f64, whole: bool) -> (f64, f64) {
    let max = if max.is_finite() { max.max(0.0) } else { 0.0 };
    let raw = (max / 4.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    // 2.5 is not a whole step below 10 (counts would get 3-steps).
    let mut step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .filter(|m| !(whole && *m == 2.5 && magnitude < 10.0))
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    if whole {
        step = step.ceil().max(1.0);
    }
    let top = ((max / step).ceil() * step).max(step);
    (top, step)
}

/// The height of a bar for `value` on an axis whose top is `top`.
pub fn bar_height(value: f64, top: f64) -> f64 {
    if top <= 0.0 {
        return 0.0;
    }
    (value / top).clamp(0.0, 1.0) * PLOT_H
}

/// A tick value as a label: whole numbers without decimals.
fn tick_label(value: f64) -> String {
    if (value - value.round()).abs() < 1e-9 {
        format!("{}", value.round() as i64)
    } else {
        format!("{value:.1}")
    }
}

/// The canvas: `svg` with its accessible name, then the plot's `body`.
fn canvas(id: &str, label: &str, empty: bool, body: Markup) -> Markup {
    html! {
        svg.plot id=(id) xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            role="img" aria-label=(label) data-empty=(empty) {
            title { (label) }
            (body)
        }
    }
}

/// The y axis from 0 to `top` by `step`: grid lines and labels, and the
/// axis' name turned along it.
fn y_axis(top: f64, step: f64, name: &str) -> Markup {
    let ticks = ((top / step).round() as usize).min(20);
    html! {
        g.axis {
            @for i in 0..=ticks {
                @let value = step * i as f64;
                @let y = BASE_Y - bar_height(value, top);
                line.grid x1=(n(LEFT)) x2=(n(LEFT + PLOT_W)) y1=(n(y)) y2=(n(y)) {}
                text.tick x=(n(LEFT - 6.0)) y=(n(y + 4.0)) text-anchor="end" { (tick_label(value)) }
            }
            line x1=(n(LEFT)) x2=(n(LEFT)) y1=(n(TOP)) y2=(n(BASE_Y)) {}
            line x1=(n(LEFT)) x2=(n(LEFT + PLOT_W)) y1=(n(BASE_Y)) y2=(n(BASE_Y)) {}
            text.name x="12" y=(n(TOP + PLOT_H / 2.0)) text-anchor="middle"
                transform=(format!("rotate(-90 12 {})", n(TOP + PLOT_H / 2.0))) { (name) }
        }
    }
}

/// The words a plot without data shows, in the middle of its area.
fn empty_note(text: &str) -> Markup {
    html! {
        text.empty x=(n(LEFT + PLOT_W / 2.0)) y=(n(TOP + PLOT_H / 2.0)) text-anchor="middle" { (text) }
    }
}

/// The UTC hour of day of `at`, as `HH:00`.
fn hour_of_day(at: Millis) -> String {
    format!("{:02}:00", at.0.div_euclid(HOUR_MILLIS).rem_euclid(24))
}

/// Videos completed and failed in one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourBar {
    /// The hour's start (UTC).
    pub hour: Millis,
    /// Videos that completed in it.
    pub completed: u64,
    /// Videos that failed in it.
    pub failed: u64,
}

/// Completions and failures per hour, oldest hour left: two bars per
/// hour on one count axis. Each hour's group carries `data-hour` (RFC
/// 3339), `data-completed` and `data-failed`.
pub fn outcomes_per_hour(hours: &[HourBar]) -> Markup {
    let max = hours
        .iter()
        .map(|h| h.completed.max(h.failed))
        .max()
        .unwrap_or(0);
    let completed: u64 = hours.iter().map(|h| h.completed).sum();
    let failed: u64 = hours.iter().map(|h| h.failed).sum();
    let total = completed + failed;
    let (top, step) = nice_axis(max as f64, true);
    let slot = PLOT_W / hours.len().max(1) as f64;
    let bar = slot * 0.38;
    let label = format!(
        "Videos completed and failed per hour (UTC), the last {} hours: {completed} completed, \
         {failed} failed",
        hours.len(),
    );
    canvas(
        "plot-outcomes",
        &label,
        total == 0,
        html! {
            (y_axis(top, step, "videos"))
            @for (i, hour) in hours.iter().enumerate() {
                @let x = LEFT + slot * i as f64;
                g.hour data-hour=(hour.hour.to_rfc3339()) data-completed=(hour.completed) data-failed=(hour.failed) {
                    title {
                        (hour_of_day(hour.hour)) " UTC: " (hour.completed) " completed, "
                        (hour.failed) " failed"
                    }
                    @if hour.completed > 0 {
                        @let h = bar_height(hour.completed as f64, top);
                        rect.completed x=(n(x + slot * 0.1)) y=(n(BASE_Y - h)) width=(n(bar)) height=(n(h))
                            data-count=(hour.completed) {}
                    }
                    @if hour.failed > 0 {
                        @let h = bar_height(hour.failed as f64, top);
                        rect.failed x=(n(x + slot * 0.1 + bar)) y=(n(BASE_Y - h)) width=(n(bar)) height=(n(h))
                            data-count=(hour.failed) {}
                    }
                    // Every third hour is named under the axis.
                    @if (hours.len() - 1 - i).is_multiple_of(3) {
                        text.tick x=(n(x + slot / 2.0)) y=(n(BASE_Y + 16.0)) text-anchor="middle" {
                            (hour_of_day(hour.hour))
                        }
                    }
                }
            }
            @if total == 0 {
                (empty_note("No video completed or failed in these hours."))
            }
            g.legend {
                rect.completed.key x=(n(LEFT + PLOT_W - 170.0)) y="4" width="10" height="10" {}
                text.tick x=(n(LEFT + PLOT_W - 156.0)) y="13" { "completed" }
                rect.failed.key x=(n(LEFT + PLOT_W - 80.0)) y="4" width="10" height="10" {}
                text.tick x=(n(LEFT + PLOT_W - 66.0)) y="13" { "failed" }
            }
        },
    )
}

/// A render time in words: `850 ms`, `42 s`, `1.5 min`, `2 h`, `3.2 d`.
pub fn duration_label(seconds: f64) -> String {
    let (value, unit) = if seconds < 1.0 {
        (seconds * 1000.0, "ms")
    } else if seconds < 60.0 {
        (seconds, "s")
    } else if seconds < 3600.0 {
        (seconds / 60.0, "min")
    } else if seconds < 86_400.0 {
        (seconds / 3600.0, "h")
    } else {
        (seconds / 86_400.0, "d")
    };
    if value >= 10.0 || (value - value.round()).abs() < 0.05 {
        format!("{} {unit}", value.round() as i64)
    } else {
        format!("{value:.1} {unit}")
    }
}

/// Round render times the x axis may be labelled at, in seconds.
const TIME_TICKS: [f64; 26] = [
    0.01,
    0.1,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    10_800.0,
    21_600.0,
    43_200.0,
    86_400.0,
    172_800.0,
    432_000.0,
    864_000.0,
    2_592_000.0,
    5_184_000.0,
    10_000_000.0,
];

/// One learned render-time distribution, as drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderTimeCurve {
    /// The model's name (`from_start`, `from_rendering`).
    pub model: &'static str,
    /// What it measures, for the plot's title.
    pub measures: &'static str,
    /// Finished videos it is fitted to.
    pub observations: u64,
    /// `(seconds, fraction done by then)`, seconds increasing; empty when
    /// nothing was learned yet.
    pub points: Vec<(f64, f64)>,
    /// `(p, seconds)` of the reported quantiles; `None` beyond the longest
    /// render seen finished.
    pub quantiles: Vec<(f64, Option<f64>)>,
}

/// A quantile's name: `p50`.
fn quantile_name(p: f64) -> String {
    format!("p{}", (p * 100.0).round() as u32)
}

/// The learned render-time distribution as a CDF on a logarithmic time
/// axis, each known quantile marked (`data-p`, `data-seconds`), the
/// median and p90 named.
pub fn render_times(curve: &RenderTimeCurve) -> Markup {
    let id = format!("plot-render-{}", curve.model);
    let (Some(first), Some(last)) = (curve.points.first(), curve.points.last()) else {
        let label = format!(
            "Render times {}: nothing learned yet (no video seen finished)",
            curve.measures
        );
        return canvas(
            &id,
            &label,
            true,
            html! {
                (y_axis(100.0, 25.0, "% done"))
                (empty_note("No data yet: no video has been seen finished."))
            },
        );
    };
    let (lo, hi) = (first.0.ln(), last.0.ln().max(first.0.ln() + 1e-9));
    let x_of = |seconds: f64| LEFT + (seconds.ln() - lo) / (hi - lo) * PLOT_W;
    let y_of = |fraction: f64| BASE_Y - fraction.clamp(0.0, 1.0) * PLOT_H;
    let path: Vec<String> = curve
        .points
        .iter()
        .map(|(s, f)| format!("{},{}", n(x_of(*s)), n(y_of(*f))))
        .collect();
    let mut ticks: Vec<f64> = TIME_TICKS
        .iter()
        .copied()
        .filter(|t| *t >= first.0 && *t <= last.0)
        .collect();
    // At most six labels; too few round values in range: name the ends.
    let thin = ticks.len().div_ceil(6).max(1);
    ticks = ticks.into_iter().step_by(thin).collect();
    if ticks.len() < 2 {
        ticks = vec![first.0, last.0];
    }
    let median = curve
        .quantiles
        .iter()
        .find(|(p, _)| (*p - 0.5).abs() < 1e-9)
        .and_then(|(_, s)| *s);
    let label = format!(
        "Render times {}, learned from {} finished videos: fraction done by each time{}",
        curve.measures,
        curve.observations,
        median.map_or(String::new(), |m| format!(", median {}", duration_label(m))),
    );
    canvas(
        &id,
        &label,
        false,
        html! {
            (y_axis(100.0, 25.0, "% done"))
            g.axis {
                @for t in &ticks {
                    line.grid x1=(n(x_of(*t))) x2=(n(x_of(*t))) y1=(n(TOP)) y2=(n(BASE_Y)) {}
                    text.tick x=(n(x_of(*t))) y=(n(BASE_Y + 16.0)) text-anchor="middle" { (duration_label(*t)) }
                }
            }
            polyline.cdf points=(path.join(" ")) {}
            @for (i, (p, seconds)) in curve.quantiles.iter().enumerate() {
                @if let Some(seconds) = seconds {
                    @let x = x_of(*seconds);
                    g.quantile data-p=(p) data-seconds=(seconds) {
                        title { (quantile_name(*p)) ": " (duration_label(*seconds)) }
                        line x1=(n(x)) x2=(n(x)) y1=(n(y_of(*p))) y2=(n(BASE_Y)) {}
                        circle cx=(n(x)) cy=(n(y_of(*p))) r="3" {}
                        // Named left of the mark in the right part of the
                        // plot, so that the name stays inside the canvas.
                        @let right = x > LEFT + PLOT_W * 0.6;
                        @if (*p - 0.5).abs() < 1e-9 || (*p - 0.9).abs() < 1e-9 {
                            text.tick x=(n(if right { x - 6.0 } else { x + 6.0 }))
                                y=(n(y_of(*p) + if i % 2 == 0 { 12.0 } else { -6.0 }))
                                text-anchor=(if right { "end" } else { "start" }) {
                                (quantile_name(*p)) " " (duration_label(*seconds))
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Upstream requests per minute over the last hour against the budget
/// (`requests_per_second` × 60, a dashed line). Each minute's bar carries
/// `data-minute` (RFC 3339) and `data-requests`.
pub fn budget_use(minutes: &[MinuteCount], requests_per_second: f64) -> Markup {
    let budget = requests_per_second * 60.0;
    let max = minutes.iter().map(|m| m.requests).max().unwrap_or(0);
    let total: u64 = minutes.iter().map(|m| u64::from(m.requests)).sum();
    let (top, step) = nice_axis(f64::from(max).max(budget * 1.05), true);
    let slot = PLOT_W / minutes.len().max(1) as f64;
    let budget_y = BASE_Y - bar_height(budget, top);
    let label = format!(
        "Upstream requests per minute, the last {} minutes: {} in all, against a budget of {} per minute",
        minutes.len(),
        total,
        tick_label(budget),
    );
    canvas(
        "plot-budget",
        &label,
        total == 0,
        html! {
            (y_axis(top, step, "requests / min"))
            @for (i, minute) in minutes.iter().enumerate() {
                @let x = LEFT + slot * i as f64;
                @let h = bar_height(f64::from(minute.requests), top);
                g.minute data-minute=(minute.minute.to_rfc3339()) data-requests=(minute.requests) {
                    @if minute.requests > 0 {
                        rect.requests x=(n(x + slot * 0.1)) y=(n(BASE_Y - h)) width=(n(slot * 0.8)) height=(n(h)) {
                            title { (minute.requests) " requests" }
                        }
                    }
                }
                @let ago = minutes.len() - 1 - i;
                @if ago.is_multiple_of(15) {
                    text.tick x=(n(x + slot / 2.0)) y=(n(BASE_Y + 16.0)) text-anchor="middle" {
                        @if ago == 0 { "now" } @else { "−" (ago) " min" }
                    }
                }
            }
            line.budget x1=(n(LEFT)) x2=(n(LEFT + PLOT_W)) y1=(n(budget_y)) y2=(n(budget_y))
                data-per-minute=(budget) {}
            text.tick x=(n(LEFT + PLOT_W - 4.0)) y=(n(budget_y - 5.0)) text-anchor="end" {
                "budget " (tick_label(budget)) " / min"
            }
            @if total == 0 {
                (empty_note("No upstream request in this hour."))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute `name` of every element opening with `open` (e.g.
    /// `<rect class="completed"`), in order.
    fn attributes(svg: &str, open: &str, name: &str) -> Vec<String> {
        svg.match_indices(open)
            .map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find('>').unwrap()];
                let start = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                tag[start..start + tag[start..].find('"').unwrap()].to_owned()
            })
            .collect()
    }

    fn floats(values: Vec<String>) -> Vec<f64> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    /// Round axis tops: at least the maximum, one step at least, steps of
    /// 1, 2, 2.5 or 5 × 10^k (whole for counts).
    #[test]
    fn axes_end_on_round_values_above_the_maximum() {
        assert_eq!(nice_axis(0.0, true), (1.0, 1.0));
        assert_eq!(nice_axis(3.0, true), (3.0, 1.0));
        assert_eq!(nice_axis(7.0, true), (8.0, 2.0));
        assert_eq!(nice_axis(10.0, true), (10.0, 5.0));
        assert_eq!(nice_axis(37.0, true), (40.0, 10.0));
        assert_eq!(nice_axis(90.0, true), (100.0, 25.0));
        assert_eq!(nice_axis(441.0, true), (600.0, 200.0));
        assert_eq!(nice_axis(9.0, false), (10.0, 2.5));
        for max in [1.0, 9.0, 11.0, 99.0, 101.0, 1234.0, 63.0] {
            let (top, step) = nice_axis(max, true);
            assert!(top >= max && top < max + step + 1e-9, "{max}: {top} {step}");
        }
    }

    /// Bar heights are proportional to the counts, on the axis' scale; each
    /// hour carries its counts; a zero count draws no bar.
    #[test]
    fn hourly_bars_are_proportional_to_their_counts() {
        let hours: Vec<HourBar> = [(3, 1), (0, 0), (7, 0), (0, 2)]
            .iter()
            .enumerate()
            .map(|(i, &(completed, failed))| HourBar {
                hour: Millis(HOUR_MILLIS * (100 + i as i64)),
                completed,
                failed,
            })
            .collect();
        let svg = outcomes_per_hour(&hours).into_string();
        assert!(svg.contains("data-empty=\"false\""), "{svg}");
        // The axis for 7 goes to 8: a bar of n is n/8 of the plot's height.
        let completed = floats(attributes(&svg, "<rect class=\"completed\" x", "height"));
        let failed = floats(attributes(&svg, "<rect class=\"failed\" x", "height"));
        let near = |drawn: &[f64], counts: &[f64]| {
            drawn.len() == counts.len()
                && drawn
                    .iter()
                    .zip(counts)
                    .all(|(h, c)| (h - c / 8.0 * PLOT_H).abs() <= 0.051)
        };
        assert!(near(&completed, &[3.0, 7.0]), "{completed:?}");
        assert!(near(&failed, &[1.0, 2.0]), "{failed:?}");
        // Bars stand on the axis.
        let ys = floats(attributes(&svg, "<rect class=\"completed\" x", "y"));
        for (y, h) in ys.iter().zip(&completed) {
            assert!((y + h - BASE_Y).abs() < 0.11, "{y} + {h}");
        }
        assert_eq!(
            attributes(&svg, "<g class=\"hour\"", "data-completed"),
            ["3", "0", "7", "0"]
        );
        assert_eq!(
            attributes(&svg, "<g class=\"hour\"", "data-hour")[0],
            "1970-01-05T04:00:00.000Z"
        );
        assert!(svg.contains(">8</text>"), "the axis' top is labelled");
    }

    /// Every plot is an accessible, self-contained image: role, label,
    /// title, viewBox, no script, no style attribute, no external
    /// reference.
    #[test]
    fn plots_are_accessible_and_self_contained() {
        let minutes: Vec<MinuteCount> = (0..60)
            .map(|i| MinuteCount {
                minute: Millis(60_000 * i),
                requests: (i % 7) as u32,
            })
            .collect();
        let curve = RenderTimeCurve {
            model: "from_start",
            measures: "from the start",
            observations: 3,
            points: vec![(1.0, 0.0), (10.0, 0.5), (100.0, 1.0)],
            quantiles: vec![(0.5, Some(10.0)), (0.99, None)],
        };
        let hours = [HourBar {
            hour: Millis(0),
            completed: 2,
            failed: 1,
        }];
        for svg in [
            outcomes_per_hour(&[]),
            outcomes_per_hour(&hours),
            budget_use(&minutes, 0.1),
            render_times(&curve),
            render_times(&RenderTimeCurve {
                points: Vec::new(),
                ..curve.clone()
            }),
        ] {
            let svg = svg.into_string();
            assert!(svg.starts_with("<svg class=\"plot\""), "{svg}");
            assert!(svg.contains("role=\"img\" aria-label=\""), "{svg}");
            assert!(svg.contains("viewBox=\"0 0 640 220\""), "{svg}");
            assert!(svg.contains("><title>"), "{svg}");
            for banned in [
                "<script",
                "style=",
                "href",
                "url(",
                "<image",
                "<foreignObject",
            ] {
                assert!(!svg.contains(banned), "{banned} in {svg}");
            }
            // Inside `<svg>` an HTML parser honours no void elements: a
            // shape left open would swallow every mark after it.
            for shape in ["line", "rect", "circle", "polyline"] {
                assert_eq!(
                    svg.matches(&format!("<{shape} ")).count(),
                    svg.matches(&format!("</{shape}>")).count(),
                    "every <{shape}> closed in {svg}"
                );
            }
        }
    }

    /// No data: words, not a broken plot.
    #[test]
    fn empty_plots_say_so() {
        let none: Vec<HourBar> = (0..24)
            .map(|i| HourBar {
                hour: Millis(HOUR_MILLIS * i),
                completed: 0,
                failed: 0,
            })
            .collect();
        let svg = outcomes_per_hour(&none).into_string();
        assert!(svg.contains("data-empty=\"true\""));
        assert!(svg.contains("No video completed or failed"));
        assert!(!svg.contains("<rect class=\"completed\" x"), "no bar");
        assert_eq!(attributes(&svg, "<g class=\"hour\"", "data-hour").len(), 24);
        // One kind of outcome alone is not "nothing".
        for (completed, failed) in [(4, 0), (0, 4)] {
            let mut hours = none.clone();
            hours[5] = HourBar {
                completed,
                failed,
                ..hours[5]
            };
            let svg = outcomes_per_hour(&hours).into_string();
            assert!(svg.contains("data-empty=\"false\""), "{completed}/{failed}");
            assert!(!svg.contains("No video completed or failed"));
        }

        let curve = RenderTimeCurve {
            model: "from_rendering",
            measures: "from rendering",
            observations: 0,
            points: Vec::new(),
            quantiles: Vec::new(),
        };
        let svg = render_times(&curve).into_string();
        assert!(svg.contains("data-empty=\"true\""));
        assert!(svg.contains("No data yet"));
        assert!(!svg.contains("polyline"));

        let idle = [MinuteCount {
            minute: Millis(0),
            requests: 0,
        }];
        let svg = budget_use(&idle, 2.0).into_string();
        assert!(svg.contains("data-empty=\"true\""));
        assert!(svg.contains("No upstream request"));
        assert!(
            svg.contains("data-per-minute=\"120\""),
            "the budget line stays"
        );
    }

    /// The budget line sits at rate × 60 per minute on the same scale as
    /// the bars; a minute over it draws a taller bar.
    #[test]
    fn the_budget_line_is_on_the_bars_scale() {
        let minutes = [
            MinuteCount {
                minute: Millis(0),
                requests: 30,
            },
            MinuteCount {
                minute: Millis(60_000),
                requests: 90,
            },
        ];
        let svg = budget_use(&minutes, 1.0).into_string();
        // Axis for max(90, 63) = 90 → top 100, step 25.
        let line_y: f64 = attributes(&svg, "<line class=\"budget\"", "y1")[0]
            .parse()
            .unwrap();
        assert!((line_y - (BASE_Y - 0.6 * PLOT_H)).abs() < 0.11, "{line_y}");
        let heights = floats(attributes(&svg, "<rect class=\"requests\"", "height"));
        assert_eq!(heights.len(), 2);
        for (height, share) in heights.iter().zip([0.3, 0.9]) {
            assert!((height - share * PLOT_H).abs() <= 0.051, "{heights:?}");
        }
        assert_eq!(
            attributes(&svg, "<g class=\"minute\"", "data-requests"),
            ["30", "90"]
        );
    }

    /// The CDF's quantile marks sit where the curve reaches their p, and
    /// carry their seconds; an unknown quantile draws no mark.
    #[test]
    fn render_time_quantiles_are_marked_on_the_curve() {
        let curve = RenderTimeCurve {
            model: "from_start",
            measures: "from the start",
            observations: 12,
            points: vec![(1.0, 0.0), (10.0, 0.5), (100.0, 1.0)],
            quantiles: vec![(0.1, Some(2.0)), (0.5, Some(10.0)), (0.99, None)],
        };
        let svg = render_times(&curve).into_string();
        assert_eq!(
            attributes(&svg, "<g class=\"quantile\"", "data-p"),
            ["0.1", "0.5"]
        );
        assert_eq!(
            attributes(&svg, "<g class=\"quantile\"", "data-seconds"),
            ["2", "10"]
        );
        // 10 s is half-way along the log axis from 1 s to 100 s.
        assert!(
            svg.contains(&format!("cx=\"{}\"", n(LEFT + PLOT_W / 2.0))),
            "{svg}"
        );
        assert!(svg.contains("p50 10 s"));
        assert!(svg.contains("median 10 s"));
    }

    /// Every number of the attribute `name` in `svg`.
    fn numbers(svg: &str, name: &str) -> Vec<f64> {
        svg.match_indices(&format!(" {name}=\""))
            .map(|(i, found)| {
                let value = &svg[i + found.len()..];
                value[..value.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    /// Every mark, label and axis lies on the 640 × 220 canvas the viewBox
    /// declares, at full scale (the tallest bar, the budget line, the
    /// slowest render, the last hour and minute): nothing is drawn off it
    /// and no size is negative.
    #[test]
    fn everything_is_drawn_on_the_canvas() {
        let hours: Vec<HourBar> = (0..24)
            .map(|i| HourBar {
                hour: Millis(HOUR_MILLIS * (1000 + i)),
                completed: (i as u64 * 7) % 50 + 1,
                failed: (i as u64 * 3) % 11,
            })
            .collect();
        let minutes: Vec<MinuteCount> = (0..60)
            .map(|i| MinuteCount {
                minute: Millis(60_000 * i),
                requests: ((i * 37) % 900) as u32,
            })
            .collect();
        let curve = RenderTimeCurve {
            model: "from_start",
            measures: "from the start",
            observations: 500,
            points: (0..=30)
                .map(|i| (10f64.powf(f64::from(i) / 10.0), f64::from(i) / 30.0))
                .collect(),
            quantiles: vec![(0.1, Some(2.0)), (0.5, Some(30.0)), (0.99, Some(900.0))],
        };
        // Every render seen took the same time: a curve with no width.
        let instant = RenderTimeCurve {
            points: vec![(5.0, 0.0), (5.0, 1.0)],
            quantiles: vec![(0.5, Some(5.0))],
            ..curve.clone()
        };
        // The 24 hours span the plot: the first hour's bar starts at its
        // left edge, the last one's ends at its right (LEFT, RIGHT).
        let svg = outcomes_per_hour(&hours).into_string();
        let starts = floats(attributes(&svg, "<rect class=\"completed\" x", "x"));
        let ends: Vec<f64> = floats(attributes(&svg, "<rect class=\"failed\" x", "x"))
            .iter()
            .zip(floats(attributes(
                &svg,
                "<rect class=\"failed\" x",
                "width",
            )))
            .map(|(x, width)| x + width)
            .collect();
        assert!(starts[0] < 52.0 + 10.0, "{starts:?}");
        assert!(*ends.last().unwrap() > 640.0 - 14.0 - 10.0, "{ends:?}");
        // The labelled hours: every third, the last one (hour 1023 since
        // the epoch, 15:00 UTC) among them.
        assert!(svg.contains(">15:00</text>"), "{svg}");
        assert!(svg.contains(">12:00</text>") && !svg.contains(">14:00</text>"));
        for svg in [
            outcomes_per_hour(&hours),
            budget_use(&minutes, 10.0),
            budget_use(&minutes, 20.0),
            render_times(&curve),
            render_times(&instant),
        ] {
            let svg = svg.into_string();
            assert!(svg.contains("viewBox=\"0 0 640 220\""), "{svg}");
            for (name, limit) in [
                ("x", 640.0),
                ("x1", 640.0),
                ("x2", 640.0),
                ("cx", 640.0),
                ("width", 640.0),
                ("y", 220.0),
                ("y1", 220.0),
                ("y2", 220.0),
                ("cy", 220.0),
                ("height", 220.0),
            ] {
                for value in numbers(&svg, name) {
                    assert!((0.0..=limit).contains(&value), "{name}={value} in {svg}");
                }
            }
            for rect in ["completed", "failed", "requests"] {
                let open = format!("<rect class=\"{rect}\"");
                let (xs, widths) = (
                    floats(attributes(&svg, &open, "x")),
                    floats(attributes(&svg, &open, "width")),
                );
                let (ys, heights) = (
                    floats(attributes(&svg, &open, "y")),
                    floats(attributes(&svg, &open, "height")),
                );
                for (x, width) in xs.iter().zip(&widths) {
                    assert!(x + width <= 640.05, "{rect} ends at {}", x + width);
                }
                for (y, height) in ys.iter().zip(&heights) {
                    assert!(y + height <= 220.05, "{rect} ends at {}", y + height);
                }
            }
            for points in attributes(&svg, "<polyline", "points") {
                for point in points.split(' ') {
                    let (x, y) = point.split_once(',').unwrap();
                    let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                    assert!(
                        (0.0..=640.0).contains(&x) && (0.0..=220.0).contains(&y),
                        "{point}"
                    );
                }
            }
        }
    }

    /// The texts of the labels under the x axis, left to right.
    fn x_labels(svg: &str) -> Vec<String> {
        let open = "text-anchor=\"middle\">";
        svg.match_indices(open)
            .map(|(i, _)| {
                let text = &svg[i + open.len()..];
                text[..text.find('<').unwrap()].to_owned()
            })
            .collect()
    }

    /// The time axis is labelled at the round values within the curve's
    /// range, every other one when there are more than six; with fewer
    /// than two in range, at the curve's ends.
    #[test]
    fn the_time_axis_is_labelled_at_round_values_in_range() {
        let curve = |first: f64, last: f64| RenderTimeCurve {
            model: "from_start",
            measures: "from the start",
            observations: 10,
            points: vec![(first, 0.0), ((first * last).sqrt(), 0.5), (last, 1.0)],
            quantiles: Vec::new(),
        };
        let labels = |first, last| x_labels(&render_times(&curve(first, last)).into_string());
        // 5, 10, 30, 60, 120, 300 and 600 s are in range: every other one.
        assert_eq!(labels(5.0, 1000.0), ["5 s", "30 s", "2 min", "10 min"]);
        assert_eq!(labels(0.9, 2.5), ["1 s", "2 s"]);
        assert_eq!(labels(5.0, 8.0), ["5 s", "8 s"]);
        // The curve runs from the plot area's bottom left (52, 188) to its
        // top right (626, 18): the fastest render at 0 %, the slowest at
        // 100 %.
        let svg = render_times(&curve(5.0, 1000.0)).into_string();
        let points = &attributes(&svg, "<polyline", "points")[0];
        let ends: Vec<&str> = points.split(' ').collect();
        assert_eq!(
            (ends[0], ends[ends.len() - 1]),
            ("52.0,188.0", "626.0,18.0"),
            "{points}"
        );
    }

    /// The request axis reaches above the budget line, so that the line
    /// and its label sit inside the plot (600 a minute: the axis goes to
    /// 800), and the minutes span the plot's width (LEFT to RIGHT).
    #[test]
    fn the_budget_plot_has_room_above_the_line_and_spans_its_width() {
        let minutes: Vec<MinuteCount> = (0..60)
            .map(|i| MinuteCount {
                minute: Millis(60_000 * i),
                requests: 30,
            })
            .collect();
        let svg = budget_use(&minutes, 10.0).into_string();
        assert!(svg.contains(">800</text>"), "{svg}");
        let xs = floats(attributes(&svg, "<rect class=\"requests\"", "x"));
        let widths = floats(attributes(&svg, "<rect class=\"requests\"", "width"));
        assert!(xs[0] < 52.0 + 5.0, "{xs:?}");
        assert!(xs[59] + widths[59] > 640.0 - 14.0 - 5.0, "{xs:?}");
        assert_eq!(x_labels(&svg), ["−45 min", "−30 min", "−15 min", "now"]);
        // At any budget the axis' top is at least 5 % above the line.
        for rate in [1.0, 2.0, 10.0, 16.0, 20.0, 100.0] {
            let svg = budget_use(&minutes, rate).into_string();
            let open = "text-anchor=\"end\">";
            // The y axis' labels (the budget line's own is words).
            let top = svg
                .match_indices(open)
                .filter_map(|(i, _)| {
                    let text = &svg[i + open.len()..];
                    text[..text.find('<').unwrap()].parse::<f64>().ok()
                })
                .fold(0.0, f64::max);
            assert!(top >= rate * 60.0 * 1.05, "{rate}/s: axis to {top}");
        }
    }

    #[test]
    fn durations_read_in_their_unit() {
        // Each unit from its first whole value on.
        assert_eq!(duration_label(1.0), "1 s");
        assert_eq!(duration_label(60.0), "1 min");
        assert_eq!(duration_label(3600.0), "1 h");
        assert_eq!(duration_label(86_400.0), "1 d");
        assert_eq!(duration_label(0.25), "250 ms");
        assert_eq!(duration_label(42.0), "42 s");
        assert_eq!(duration_label(90.0), "1.5 min");
        assert_eq!(duration_label(7200.0), "2 h");
        assert_eq!(duration_label(3.5 * 86_400.0), "3.5 d");
    }
}
