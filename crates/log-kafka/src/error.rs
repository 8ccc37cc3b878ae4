//! The one place that turns librdkafka errors into [`LogError`]s and decides, from the error
//! code, whether retrying may help. Nothing else in this crate classifies errors.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tenantsync_log::{LogError, Partition};

/// Wraps a client error with the context a person needs (what was being done, on which topic
/// and partition), marking it transient when a retry may succeed.
pub(crate) fn backend(context: impl Into<String>, error: KafkaError) -> LogError {
    let transient = match &error {
        KafkaError::NoMessageReceived => true,
        KafkaError::Canceled
        | KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Nul(_)
        | KafkaError::AdminOpCreation(_)
        | KafkaError::Subscription(_) => false,
        other => other.rdkafka_error_code().is_some_and(is_transient_code),
    };
    LogError::backend(context, transient, error)
}

/// Whether a commit failed because this member no longer owns what it committed: the group
/// rebalanced, or the member was fenced or timed out. The new owner re-reads from the last
/// successful commit, so the caller may treat this as harmless.
pub(crate) fn lost_ownership(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::AssignmentLost
                | RDKafkaErrorCode::State
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::FencedMemberEpoch
                | RDKafkaErrorCode::StaleMemberEpoch
                | RDKafkaErrorCode::UnknownPartition
        )
    )
}

pub(crate) fn not_owner(topic: &str, partition: Partition) -> LogError {
    LogError::NotOwner {
        topic: topic.to_string(),
        partition,
    }
}

/// Connectivity, leadership moves, coordinator changes, rebalances, timeouts and throttling
/// pass; configuration, authorization, invalid requests and fatal producer states do not.
fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | Resolve
            | MessageTimedOut
            | AllBrokersDown
            | OperationTimedOut
            | QueueFull
            | ISRInsufficient
            | NodeUpdate
            | WaitingForCoordinator
            | InProgress
            | PreviousInProgress
            | TimedOutQueue
            | Retry
            | Interrupted
            | PollExceeded
            | AssignmentLost
            | DestroyBroker
            | UnknownTopicOrPartition
            | LeaderNotAvailable
            | NotLeaderForPartition
            | RequestTimedOut
            | BrokerNotAvailable
            | ReplicaNotAvailable
            | NetworkException
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | IllegalGeneration
            | UnknownMemberId
            | RebalanceInProgress
            | NotController
            | KafkaStorageError
            | FetchSessionIdNotFound
            | InvalidFetchSessionEpoch
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | OffsetNotAvailable
            | PreferredLeaderNotAvailable
            | EligibleLeadersNotAvailable
            | UnstableOffsetCommit
            | ThrottlingQuotaExceeded
            | RebootstrapRequired
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transience_follows_the_error_code() {
        let transient = [
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            KafkaError::MetadataFetch(RDKafkaErrorCode::AllBrokersDown),
            KafkaError::ConsumerCommit(RDKafkaErrorCode::RebalanceInProgress),
            KafkaError::MessageConsumption(RDKafkaErrorCode::NotLeaderForPartition),
        ];
        for error in transient {
            assert!(backend("ctx", error).is_transient());
        }
        let permanent = [
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            KafkaError::MetadataFetch(RDKafkaErrorCode::TopicAuthorizationFailed),
            KafkaError::MessageProduction(RDKafkaErrorCode::Fatal),
            KafkaError::Canceled,
            KafkaError::ClientCreation("bad".into()),
        ];
        for error in permanent {
            assert!(!backend("ctx", error).is_transient());
        }
    }

    #[test]
    fn context_is_kept_in_the_message() {
        let error = backend(
            "appending to topic t partition 3",
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        );
        assert!(
            error
                .to_string()
                .starts_with("appending to topic t partition 3: ")
        );
    }

    #[test]
    fn rebalance_codes_mean_lost_ownership() {
        assert!(lost_ownership(&KafkaError::ConsumerCommit(
            RDKafkaErrorCode::IllegalGeneration
        )));
        assert!(!lost_ownership(&KafkaError::ConsumerCommit(
            RDKafkaErrorCode::GroupAuthorizationFailed
        )));
    }
}
