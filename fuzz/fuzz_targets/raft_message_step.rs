#![no_main]
//! Parses raft messages from the input and steps them into a running
//! single-node cluster; the node must still commit a write afterwards.
use libfuzzer_sys::fuzz_target;
use raftify_core::raft::eraftpb::Message;
use raftify_reliability::fuzz_targets::{paused_runtime, single_node};
use raftify_reliability::sm::Cmd;
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
    let rt = paused_runtime().unwrap();
    rt.block_on(async move {
        let node = single_node().await.unwrap();
        for m in msgs {
            let _ = node.handle().inbound().step_from(None, vec![m]);
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
        node.handle().shutdown().await;
    });
});
