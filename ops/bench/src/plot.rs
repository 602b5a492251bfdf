//! PNG line charts for the sweep (a metric against concurrency, one line per endpoint and
//! workload). Text is drawn with a font compiled into the binary, so no system fonts are needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::BenchError;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(concurrency, value)` points, in any order.
    pub points: Vec<(f64, f64)>,
}

static FONT: Once = Once::new();

/// Line colours, dark enough to read on white; later lines reuse them.
const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn ensure_font() {
    FONT.call_once(|| {
        // Registering the embedded font cannot fail for a valid TTF; if it did, text would be
        // skipped by plotters and the chart still drawn.
        let _ = register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Draws `series` against concurrency (x on a log2 axis labelled 1, 2, 4, …) into `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), BenchError> {
    ensure_font();
    let err = |e: &dyn std::fmt::Display| BenchError::Plot {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0 > 0.0 && p.1.is_finite())
    };
    let (mut x_min, mut x_max, mut y_max) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts() {
        let lx = x.log2();
        x_min = x_min.min(lx);
        x_max = x_max.max(lx);
        y_max = y_max.max(y);
    }
    if !x_min.is_finite() {
        (x_min, x_max) = (0.0, 1.0);
    }
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let x_range = (x_min - 0.3)..(x_max + 0.3);
    // Enough decimals that neighbouring y labels differ.
    let prec = match y_top {
        t if t < 5.0 => 2,
        t if t < 50.0 => 1,
        _ => 0,
    };

    let root = BitMapBackend::new(path, (1100, 680)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(x_range, 0f64..y_top)
        .map_err(|e| err(&e))?;
    let n_labels = ((x_max - x_min).round() as usize + 1).clamp(2, 12);
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc(y_label)
        .x_labels(n_labels)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{}", 2f64.powf(x.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.prec$}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0 > 0.0 && p.1.is_finite())
            .map(|&(x, y)| (x.log2(), y))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    if !series.is_empty() {
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.png");
        let series = vec![
            Series {
                name: "a / balanced".into(),
                points: vec![(1.0, 40.0), (16.0, 500.0), (64.0, 1500.0)],
            },
            Series {
                name: "b / balanced".into(),
                points: vec![(1.0, 30.0), (16.0, f64::NAN), (64.0, 1200.0)],
            },
        ];
        line_chart(&path, "Output token throughput", "tok/s", &series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5_000);
        // An empty chart still renders.
        line_chart(&dir.join("empty.png"), "empty", "ms", &[]).unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }
}
