//! [`Stats`] in the Prometheus text exposition format, for a `/metrics` route.

use std::fmt::Write;

use crate::stats::Stats;

impl Stats {
    /// The snapshot in the [Prometheus text exposition format] (version 0.0.4), every metric
    /// named `wshub_…`: serve it with content type `text/plain; version=0.0.4` from a
    /// `/metrics` route (`examples/axum_app.rs` does).
    ///
    /// Counters end in `_total`; sessions closed are one counter with a `cause` label
    /// (`client`, `server`, `ping_timeout`, `disconnected`, `io_error`). Cheap: a few hundred
    /// bytes formatted from the snapshot, no lock taken.
    ///
    /// ```
    /// # struct App;
    /// # impl wshub::Handler for App {}
    /// let hub = wshub::Hub::new(App);
    /// let text = hub.stats().to_prometheus();
    /// assert!(text.contains("\nwshub_sessions 0\n"));
    /// assert!(text.contains(r#"wshub_sessions_closed_total{cause="client"} 0"#));
    /// ```
    ///
    /// [Prometheus text exposition format]: https://prometheus.io/docs/instrumenting/exposition_formats/
    pub fn to_prometheus(&self) -> String {
        // Destructured without `..`: a field added to `Stats` fails to compile here until it
        // is exported too.
        let Stats {
            sessions,
            topics,
            history_topics,
            sessions_opened,
            handshakes_refused,
            messages_in,
            bytes_in,
            messages_queued,
            messages_dropped,
            slow_consumer_disconnects,
            bytes_out,
            write_batches,
            queue_high_water_bytes,
            closed_by_client,
            closed_by_server,
            ping_timeouts,
            disconnected,
            io_errors,
        } = self;
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(
                out,
                "# HELP wshub_{name} {help}\n# TYPE wshub_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "wshub_{name}{labels} {value}");
            }
        };
        metric(
            "sessions",
            "gauge",
            "Sessions connected now.",
            &[("", *sessions as u64)],
        );
        metric(
            "topics",
            "gauge",
            "Topics with at least one subscriber now.",
            &[("", *topics as u64)],
        );
        metric(
            "history_topics",
            "gauge",
            "Topics whose history state this node holds now.",
            &[("", *history_topics as u64)],
        );
        metric(
            "sessions_opened_total",
            "counter",
            "Sessions opened.",
            &[("", *sessions_opened)],
        );
        metric(
            "sessions_closed_total",
            "counter",
            "Sessions ended, by cause.",
            &[
                (r#"{cause="client"}"#, *closed_by_client),
                (r#"{cause="server"}"#, *closed_by_server),
                (r#"{cause="ping_timeout"}"#, *ping_timeouts),
                (r#"{cause="disconnected"}"#, *disconnected),
                (r#"{cause="io_error"}"#, *io_errors),
            ],
        );
        metric(
            "handshakes_refused_total",
            "counter",
            "Upgrade requests answered with an HTTP error status.",
            &[("", *handshakes_refused)],
        );
        metric(
            "messages_in_total",
            "counter",
            "Messages received from clients.",
            &[("", *messages_in)],
        );
        metric(
            "bytes_in_total",
            "counter",
            "Payload bytes received from clients.",
            &[("", *bytes_in)],
        );
        metric(
            "messages_queued_total",
            "counter",
            "Messages queued for sessions, one per recipient.",
            &[("", *messages_queued)],
        );
        metric(
            "messages_dropped_total",
            "counter",
            "Messages discarded by a drop policy or addressed to a closing session.",
            &[("", *messages_dropped)],
        );
        metric(
            "slow_consumer_disconnects_total",
            "counter",
            "Sessions closed with 1008 because their queue was full.",
            &[("", *slow_consumer_disconnects)],
        );
        metric(
            "bytes_out_total",
            "counter",
            "Bytes written to sockets.",
            &[("", *bytes_out)],
        );
        metric(
            "write_batches_total",
            "counter",
            "Socket write batches.",
            &[("", *write_batches)],
        );
        metric(
            "queue_high_water_bytes",
            "gauge",
            "The most bytes any one session ever had queued.",
            &[("", *queue_high_water_bytes)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::stats::Stats;

    #[test]
    fn every_sample_line_is_well_formed() {
        let stats = Stats {
            sessions: 3,
            closed_by_server: 7,
            ..Stats::default()
        };
        let text = stats.to_prometheus();
        assert!(text.contains("\nwshub_sessions 3\n"));
        assert!(text.contains("wshub_sessions_closed_total{cause=\"server\"} 7\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            assert!(name.starts_with("wshub_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
        // Every metric has its HELP and TYPE lines, once.
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, 14);
        assert_eq!(helps, types);
    }
}
