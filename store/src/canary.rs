//! Planted bugs for proving the simulator's strength, compiled only with the `canary` feature.
//!
//! The active canary is chosen per thread: the simulator runs each seed on one thread, so
//! parallel jobs testing different canaries never interfere.

use std::cell::Cell;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Canary {
    /// Policy `always` acks a write without fsyncing its WAL record.
    AckBeforeWalFsync,
    /// Rotation does not sync the directory after finalizing the closed pair.
    SkipRotationDirSync,
    /// Rotation drops WAL segments although the closed pair's data was never fsynced.
    DropWalBeforePairDurable,
    /// A failed WAL fsync is retried and, when the retry succeeds, the write is acked.
    TrustRetriedFsync,
    /// Replay skips the record at the file start block (off by one).
    ReplayBoundaryOffByOne,
    /// A failed open leaves the open pair's file handles open.
    LeakHandleOnFailedOpen,
    /// Prune deletes a pair's files although a live read snapshot still uses them.
    DeleteUnderLiveSnapshot,
    /// Rotation syncs the directory after dropping the WAL segments instead of before: the same
    /// calls, one fsync moved later within the operation.
    DirSyncAfterWalDrop,
    /// get_logs lets a log that lacks a constrained topic position match it (as a wildcard).
    MissingTopicMatches,
    /// Block 0 is a "nothing seen yet" sentinel (upstream's zero): after block 0 the store acts
    /// as if no block was seen, so a second write to block 0 rotates the window again.
    ZeroHeightSentinel,
    /// Open appends to a WAL segment it found without records and did not rewrite, without
    /// syncing it and its directory: an earlier open's rename that never reached the disk.
    SkipReusedSegmentSync,
    /// Read snapshots leave out the open pair's newest row group written to its unfinished
    /// files (an off-by-one over the written groups): its rows are neither in memory nor served.
    SkipNewestOpenRowGroup,
    /// Page pruning treats a page's column-index minimum as exclusive: a page whose first
    /// (smallest) address is the one asked for is skipped, and its rows go missing.
    PageMinExclusive,
    /// A read handed to decode jobs one at a time gives every job the page selections of the
    /// read's first groups instead of its own: a job skips the pages another group needed.
    JobPagesFromFirstRun,
    /// The WAL segments open's rewrite replaced are never closed (their handles leak instead of
    /// being dropped on the write lane).
    LeakReplacedWalSegments,
    /// A flush sorts a logs row group by the rows' address prefixes alone: rows land out of the
    /// order the logs file declares (address, topic0, block, log index), which no read shows
    /// (reads put what they return in `get_logs` order).
    PartialKeyRowSort,
    /// A flush's chunk leaves the rows reads see when its encoding starts on the write lane
    /// instead of when its row groups are appended: a read while it is encoded misses them.
    ChunkUnpublishedWhileEncoding,
    /// A flush sorts a logs row group by the first 8 bytes of address and topic0, and by the
    /// full values only where both prefixes tie (the sort before b584cbe): two addresses
    /// sharing their first 8 bytes (precompiles 0x00..1001 and 0x00..1002) are ordered by
    /// topic0 first, against the file's declared order.
    PrefixPairRowSort,
    /// Open keeps every WAL segment as it read it, the last one too, instead of rewriting the
    /// records no successor proves durable: records a crashed process appended after a failed
    /// fsync, read back from the page cache, are replayed and built upon, then lost to a
    /// power loss.
    TrustEverySegmentDurable,
}

impl Canary {
    pub const ALL: [Canary; 19] = [
        Canary::AckBeforeWalFsync,
        Canary::SkipRotationDirSync,
        Canary::DropWalBeforePairDurable,
        Canary::TrustRetriedFsync,
        Canary::ReplayBoundaryOffByOne,
        Canary::LeakHandleOnFailedOpen,
        Canary::DeleteUnderLiveSnapshot,
        Canary::DirSyncAfterWalDrop,
        Canary::MissingTopicMatches,
        Canary::ZeroHeightSentinel,
        Canary::SkipReusedSegmentSync,
        Canary::SkipNewestOpenRowGroup,
        Canary::PageMinExclusive,
        Canary::JobPagesFromFirstRun,
        Canary::LeakReplacedWalSegments,
        Canary::PartialKeyRowSort,
        Canary::ChunkUnpublishedWhileEncoding,
        Canary::PrefixPairRowSort,
        Canary::TrustEverySegmentDurable,
    ];
}

thread_local! {
    static ACTIVE: Cell<Option<Canary>> = const { Cell::new(None) };
}

/// Activates `canary` for the current thread (None disables).
pub fn set(canary: Option<Canary>) {
    ACTIVE.with(|a| a.set(canary));
}

pub fn active(canary: Canary) -> bool {
    ACTIVE.with(|a| a.get() == Some(canary))
}
