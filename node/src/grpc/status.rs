//! The one place where errors become gRPC statuses. Invalid input is `InvalidArgument`
//! naming field, value and rule; a storage failure is never reported as the caller's fault.

use tonic::{Code, Status};

use crate::registry::RegistryError;

pub fn from_registry(err: RegistryError) -> Status {
    let code = match &err {
        RegistryError::Invalid(_) => Code::InvalidArgument,
        RegistryError::NotFound | RegistryError::Purged { .. } => Code::NotFound,
        RegistryError::AlreadyRegistered { .. } => Code::AlreadyExists,
        RegistryError::MovedOut { .. } | RegistryError::NotSyncing => Code::FailedPrecondition,
        RegistryError::OutsideTownship { .. } => Code::PermissionDenied,
        // What the caller asked for would make a message no peer accepts.
        RegistryError::Storage(crate::storage::StorageError::EnvelopeTooLarge { .. }) => Code::InvalidArgument,
        // Nothing was stored, and trying again later works: the disk is full or failing.
        RegistryError::Storage(crate::storage::StorageError::DiskFull { .. }) => Code::Unavailable,
        RegistryError::Storage(crate::storage::StorageError::SyncFailed(_)) => {
            tracing::error!(error = %err, "registry request failed: the change may not be durable");
            return Status::unavailable(
                "the node could not make the change durable and reopens its store to recover; \
                 send the request again once it is back (a repeated request is recognised)",
            );
        }
        RegistryError::Storage(crate::storage::StorageError::Rocks(e)) if e.kind() == rocksdb::ErrorKind::IOError => {
            tracing::error!(error = %err, "registry request failed: the store cannot write");
            return Status::unavailable(
                "the node cannot write to its disk now (full?); nothing was stored; see its log",
            );
        }
        RegistryError::Storage(_) | RegistryError::Sealed(_) => {
            tracing::error!(error = %err, "registry request failed inside the node");
            return Status::internal("the node could not complete the request; see its log");
        }
    };
    Status::new(code, err.to_string())
}

pub fn from_join(err: tokio::task::JoinError) -> Status {
    tracing::error!(error = %err, "registry worker task failed");
    Status::internal("the node could not complete the request; see its log")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InvalidField;
    use crate::storage::StorageError;

    #[test]
    fn invalid_input_keeps_its_message() {
        let s = from_registry(InvalidField::new("date", "2026-02-30", "is not a calendar date").into());
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "date: \"2026-02-30\" is not a calendar date");
    }

    #[test]
    fn storage_failures_are_internal_and_say_nothing_of_the_input() {
        let s = from_registry(StorageError::Corrupt { what: "person record", detail: "x".into() }.into());
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("person record"));
    }
}
