//! Routes librdkafka's own log lines and global errors into `tracing` (target `librdkafka`), so
//! they follow the process's log filter instead of going to stderr. Shared by every client this
//! crate builds; group members wrap it to also track their assignment (see `group`). Nothing
//! here may block or call back into librdkafka: these run on librdkafka's own threads.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use tracing::{debug, error, info, trace, warn};

/// Context of the producer, the admin client and the pooled readers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        log_line(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ConsumerContext for LogContext {}

/// librdkafka's levels are syslog's. Notices (connections going up and down) are routine, so
/// they go to `info`; librdkafka's informational and debug lines go below that.
pub(crate) fn log_line(level: RDKafkaLogLevel, facility: &str, message: &str) {
    let level = match level {
        // Pass-through options go to every client, so a consumer property given to the
        // producer is expected, not a misconfiguration worth a warning.
        _ if facility == "CONFWARN" && message.contains("will be ignored by this") => {
            RDKafkaLogLevel::Debug
        }
        // A broker connection failing: librdkafka reconnects on its own, and a call that
        // cannot complete meanwhile reports its own error.
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
            if facility == "FAIL" =>
        {
            RDKafkaLogLevel::Warning
        }
        other => other,
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice => info!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Info => debug!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Debug => trace!(target: "librdkafka", facility, "{message}"),
    }
}

/// Global client errors are mostly connectivity that librdkafka retries on its own; the call
/// that is affected reports its own error, so a warning is enough here.
pub(crate) fn client_error(error: KafkaError, reason: &str) {
    warn!(target: "librdkafka", %error, reason, "kafka client error");
}
