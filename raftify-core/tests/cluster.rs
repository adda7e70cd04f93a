//! The cluster scenarios (`scenarios/`) on in-memory storage.

use raftify_core::testkit::{mem_factory, StoreFactory};

fn factory() -> StoreFactory {
    mem_factory()
}

mod scenarios;
