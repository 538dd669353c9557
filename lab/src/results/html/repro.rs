//! The reproducer statistics of a `--repeat` run (`report::repro`): per cell its hit rate, the
//! 95 % bound a run without a hit allows, and the times to detection as a small inline SVG chart.

use maud::{html, Markup};

use super::clean;
use crate::report::{self, CellResult, Repro};

pub fn section(cells: &[CellResult]) -> Markup {
    if !cells.iter().any(|c| c.run.is_some()) {
        return html! {};
    }
    html! {
        section #repro {
            h2 { "Reproducer" }
            table.repro {
                thead {
                    tr {
                        th { "cell" } th { "hits" } th { "hit rate" } th { "95 % bound" }
                        th { "detected after ready (median, min–max)" } th { "times to detection" }
                    }
                }
                tbody { @for r in report::repro(cells) { (row(&r)) } }
            }
        }
    }
}

fn row(r: &Repro) -> Markup {
    let kinds: Vec<String> = r.hits_by_kind.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
    html! {
        tr #{"repro-" (r.id)} data-cell=(r.id) data-hits=(r.hits) data-runs=(r.runs) {
            td { (r.id) @if r.errors > 0 { br; small { (r.errors) " runs could not be judged" } } }
            td.num { (r.hits) " of " (r.runs) @if !kinds.is_empty() { br; small { (clean(&kinds.join(", "))) } } }
            td.num { (format!("{:.0} %", r.hit_rate * 100.0)) }
            td.num {
                @match r.upper_bound_95 {
                    Some(bound) => span title="the failure rate that this many clean runs still allow" {
                        (format!("below {:.1} %", bound * 100.0))
                    },
                    None => "–",
                }
            }
            td.num {
                @if let (Some(med), Some(min), Some(max)) = (r.detect_median_s, r.detect_min_s, r.detect_max_s) {
                    (format!("{med:.1} s ({min:.1}–{max:.1} s)"))
                }
            }
            td { (chart(&r.detect_s)) }
        }
    }
}

const WIDTH: f64 = 180.0;
const HEIGHT: f64 = 36.0;

/// A bar per hit, in run order, as tall as its time to detection; the longest is labelled.
fn chart(detect_s: &[f64]) -> Markup {
    let Some(max) = detect_s.iter().copied().reduce(f64::max).filter(|&m| m > 0.0) else {
        return html! {};
    };
    let step = (WIDTH / detect_s.len() as f64).min(12.0);
    html! {
        svg.chart width=(WIDTH + 40.0) height=(HEIGHT) viewBox={"0 0 " (WIDTH + 40.0) " " (HEIGHT)}
            role="img" aria-label="times to detection" {
            @for (i, &s) in detect_s.iter().enumerate() {
                @let h = (s / max * (HEIGHT - 4.0)).max(1.0);
                rect x=(format!("{:.1}", i as f64 * step)) y=(format!("{:.1}", HEIGHT - h))
                    width=(format!("{:.1}", (step - 1.0).max(1.0))) height=(format!("{h:.1}")) {
                    title { (format!("hit {}: {s:.1} s", i + 1)) }
                }
            }
            text x=(WIDTH + 4.0) y="12" { (format!("{max:.0} s")) }
        }
    }
}
