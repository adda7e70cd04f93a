#![no_main]
//! Parses raft messages from the input and steps them into a running
//! single-node cluster; the node must still commit a write afterwards.
use libfuzzer_sys::fuzz_target;
use raftify_core::raft::eraftpb::Message;
use raftify_core::{Bootstrap, Config, InProcNetwork, MemStore, Raft};
use raftify_reliability::sm::{ApplyOracle, Cmd, RecKv, SimNode};
use std::sync::Arc;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let msgs: Vec<Message> = data
        .split(|b| *b == 0xFF)
        .filter_map(raftify_reliability::fuzz_targets::raft_message)
        .map(|mut m| {
            m.to = 1;
            m
        })
        .collect();
    if msgs.is_empty() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let net = InProcNetwork::new(1);
        let node: SimNode = Raft::builder(
            Config::new(1),
            RecKv::new(1, ApplyOracle::new(Default::default())),
        )
        .storage(Arc::new(MemStore::new()))
        .transport(net.transport(1))
        .bootstrap(Bootstrap::Single {
            addr: net.addr_of(1),
        })
        .logger(raftify_core::discard_logger())
        .start()
        .await
        .unwrap();
        node.wait_for_leader(Duration::from_secs(5)).await.unwrap();
        for m in msgs {
            let _ = node.step(vec![m]);
        }
        let put = Cmd::Put {
            key: "k".into(),
            value: "v".into(),
        };
        let mut ok = false;
        for _ in 0..30 {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(1), node.propose(&put)).await
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "node stopped serving: {:?}", node.state());
        node.shutdown().await;
    });
});
