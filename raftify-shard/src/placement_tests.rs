use super::*;

fn info(n: NodeId) -> NodeInfo {
    NodeInfo {
        raft_addr: format!("127.0.0.1:{}", 7000 + n),
        client_addr: format!("127.0.0.1:{}", 6000 + n),
        leaving: false,
        down: false,
    }
}

fn set(nodes: &[NodeId]) -> BTreeSet<NodeId> {
    nodes.iter().copied().collect()
}

fn range(a: Slot, b: Slot) -> SlotRange {
    SlotRange::new(a, b).unwrap()
}

/// A placement bootstrapped on node 1, with nodes 2 and 3 added.
fn three() -> Placement {
    let mut p = Placement::default();
    p.apply(
        None,
        Change::Bootstrap {
            node: 1,
            info: info(1),
            settings: Settings::default(),
        },
    )
    .unwrap();
    for n in [2, 3] {
        p.apply(
            None,
            Change::AddNode {
                node: n,
                info: info(n),
            },
        )
        .unwrap();
    }
    p
}

#[test]
fn bootstrap_gives_every_slot_to_group_one_once() {
    let mut p = Placement::default();
    assert_eq!(
        p.apply(
            None,
            Change::AddNode {
                node: 1,
                info: info(1)
            }
        ),
        Err(PlacementError::NotBootstrapped)
    );
    let boot = Change::Bootstrap {
        node: 1,
        info: info(1),
        settings: Settings::default(),
    };
    assert_eq!(p.apply(None, boot.clone()), Ok(1));
    assert_eq!(p.ranges(), vec![(SlotRange::all(), 1)]);
    assert_eq!(p.groups_of(1), vec![1]);
    assert_eq!(
        p.apply(None, boot),
        Err(PlacementError::AlreadyBootstrapped)
    );
    p.check().unwrap();
}

#[test]
fn a_stale_plan_is_refused_and_changes_nothing() {
    let mut p = three();
    let v = p.version();
    let before = p.clone();
    let change = Change::CreateGroup {
        group: 2,
        replicas: set(&[2]),
    };
    assert_eq!(
        p.apply(Some(v - 1), change.clone()),
        Err(PlacementError::Stale {
            expected: v - 1,
            actual: v
        })
    );
    assert_eq!(p, before);
    assert_eq!(p.apply(Some(v), change), Ok(v + 1));
}

#[test]
fn adding_a_node_again_is_idempotent_and_updates_addresses() {
    let mut p = three();
    let v = p.version();
    assert_eq!(
        p.apply(
            None,
            Change::AddNode {
                node: 2,
                info: info(2)
            }
        ),
        Ok(v)
    );
    let moved = NodeInfo {
        client_addr: "10.0.0.2:6379".into(),
        ..info(2)
    };
    assert_eq!(
        p.apply(
            None,
            Change::AddNode {
                node: 2,
                info: moved.clone()
            }
        ),
        Ok(v + 1)
    );
    assert_eq!(p.nodes()[&2], moved);
    assert!(matches!(
        p.apply(
            None,
            Change::AddNode {
                node: 0,
                info: info(0)
            }
        ),
        Err(PlacementError::Invalid(_))
    ));
}

#[test]
fn groups_are_numbered_in_order_and_need_known_replicas() {
    let mut p = three();
    assert_eq!(
        p.apply(
            None,
            Change::CreateGroup {
                group: 5,
                replicas: set(&[1])
            }
        ),
        Err(PlacementError::WrongGroupId { given: 5, next: 2 })
    );
    assert_eq!(
        p.apply(
            None,
            Change::CreateGroup {
                group: 2,
                replicas: set(&[9])
            }
        ),
        Err(PlacementError::UnknownNode(9))
    );
    assert!(matches!(
        p.apply(
            None,
            Change::CreateGroup {
                group: 2,
                replicas: set(&[])
            }
        ),
        Err(PlacementError::Invalid(_))
    ));
    p.apply(
        None,
        Change::CreateGroup {
            group: 2,
            replicas: set(&[2, 3]),
        },
    )
    .unwrap();
    assert_eq!(p.next_group(), 3);
    assert_eq!(p.slot_count(2), 0);
    p.check().unwrap();
}

#[test]
fn a_move_keeps_one_owner_per_slot_and_commits_or_aborts_whole() {
    let mut p = three();
    p.apply(
        None,
        Change::CreateGroup {
            group: 2,
            replicas: set(&[2]),
        },
    )
    .unwrap();
    let m = SlotMove {
        slots: range(8192, 16383),
        from: 1,
        to: 2,
    };
    p.apply(None, Change::BeginMove(m)).unwrap();
    // During the move the source still owns the slots.
    assert_eq!(p.owner(9000), 1);
    assert_eq!(p.moving(), Some(m));
    let other = SlotMove {
        slots: range(0, 10),
        from: 1,
        to: 2,
    };
    assert_eq!(
        p.apply(None, Change::BeginMove(other)),
        Err(PlacementError::MoveInProgress(m))
    );
    assert_eq!(
        p.apply(None, Change::CommitMove(other)),
        Err(PlacementError::NoSuchMove)
    );
    // A group taking part in a move cannot be deleted.
    assert!(matches!(
        p.apply(None, Change::DeleteGroup { group: 2 }),
        Err(PlacementError::GroupInUse { .. })
    ));
    p.apply(None, Change::CommitMove(m)).unwrap();
    assert_eq!(
        p.ranges(),
        vec![(range(0, 8191), 1), (range(8192, 16383), 2)]
    );
    assert_eq!(p.moving(), None);
    // The source's copy is still to be purged, and it is remembered; the
    // group cannot go meanwhile.
    assert_eq!(p.purging(), &[m]);
    p.check().unwrap();
    let v = p.version();
    assert!(matches!(
        p.apply(None, Change::DeleteGroup { group: 1 }),
        Err(PlacementError::GroupInUse { .. })
    ));
    p.apply(None, Change::Purged(m)).unwrap();
    assert!(p.purging().is_empty());
    assert_eq!(
        p.apply(None, Change::Purged(m)),
        Ok(v + 1),
        "twice: no change"
    );
    p.check().unwrap();

    // A move of slots the source does not own is refused.
    let wrong = SlotMove {
        slots: range(8000, 8300),
        from: 1,
        to: 2,
    };
    assert_eq!(
        p.apply(None, Change::BeginMove(wrong)),
        Err(PlacementError::NotOwner {
            slots: wrong.slots,
            group: 1
        })
    );
    // Aborted, the slots stay.
    let back = SlotMove {
        slots: range(8192, 8200),
        from: 2,
        to: 1,
    };
    p.apply(None, Change::BeginMove(back)).unwrap();
    p.apply(None, Change::AbortMove(back)).unwrap();
    assert_eq!(p.owner(8192), 2);
}

#[test]
fn a_node_with_replicas_cannot_be_removed_and_a_leaving_one_gets_none() {
    let mut p = three();
    p.apply(
        None,
        Change::SetReplicas {
            group: 1,
            replicas: set(&[1, 2]),
        },
    )
    .unwrap();
    assert_eq!(
        p.apply(None, Change::RemoveNode { node: 2 }),
        Err(PlacementError::NodeInUse {
            node: 2,
            groups: vec![1]
        })
    );
    p.apply(
        None,
        Change::SetLeaving {
            node: 3,
            leaving: true,
        },
    )
    .unwrap();
    assert!(matches!(
        p.apply(
            None,
            Change::SetReplicas {
                group: 1,
                replicas: set(&[1, 2, 3])
            }
        ),
        Err(PlacementError::Invalid(_))
    ));
    // Leaving is kept when the node re-announces its addresses.
    p.apply(
        None,
        Change::AddNode {
            node: 3,
            info: info(3),
        },
    )
    .unwrap();
    assert!(p.nodes()[&3].leaving);
    p.apply(None, Change::RemoveNode { node: 3 }).unwrap();
    assert!(!p.nodes().contains_key(&3));
    p.check().unwrap();
}

#[test]
fn the_stored_form_round_trips_and_bad_input_is_refused() {
    let mut p = three();
    p.apply(
        None,
        Change::CreateGroup {
            group: 2,
            replicas: set(&[2]),
        },
    )
    .unwrap();
    let m = SlotMove {
        slots: range(100, 199),
        from: 1,
        to: 2,
    };
    p.apply(None, Change::BeginMove(m)).unwrap();
    p.apply(None, Change::CommitMove(m)).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    // Slot owners are stored as runs, not 16,384 numbers.
    assert!(json.len() < 1000, "{}", json.len());
    let back: Placement = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);

    // A slot owned by a group that does not exist.
    let bad = json.replace(
        "\"owners\":[[{\"start\":0,\"end\":99},1]",
        "\"owners\":[[{\"start\":0,\"end\":99},9]",
    );
    assert_ne!(bad, json);
    assert!(serde_json::from_str::<Placement>(&bad).is_err());
    // Runs that leave slots uncovered.
    let short = json.replace("\"end\":16383", "\"end\":16000");
    assert!(serde_json::from_str::<Placement>(&short).is_err());
    assert!(serde_json::from_str::<Placement>("{\"version\":1}").is_err());
    let empty = serde_json::to_string(&Placement::default()).unwrap();
    assert_eq!(
        serde_json::from_str::<Placement>(&empty).unwrap(),
        Placement::default()
    );
}

#[test]
fn a_replica_is_recorded_as_a_learner_then_promoted() {
    let mut p = three();
    p.apply(
        None,
        Change::SetLearners {
            group: 1,
            learners: set(&[2]),
        },
    )
    .unwrap();
    assert!(p.groups()[&1].hosts(2));
    assert_eq!(p.groups_of(2), vec![1]);
    // Not a learner and a voter at once.
    assert!(matches!(
        p.apply(
            None,
            Change::SetLearners {
                group: 1,
                learners: set(&[1])
            }
        ),
        Err(PlacementError::Invalid(_))
    ));
    // Promoted: the learner entry goes.
    p.apply(
        None,
        Change::SetReplicas {
            group: 1,
            replicas: set(&[1, 2]),
        },
    )
    .unwrap();
    assert!(p.groups()[&1].learners.is_empty());
    // A learner on a leaving node may be dropped, not added.
    p.apply(
        None,
        Change::SetLeaving {
            node: 3,
            leaving: true,
        },
    )
    .unwrap();
    assert!(matches!(
        p.apply(
            None,
            Change::SetLearners {
                group: 1,
                learners: set(&[3])
            }
        ),
        Err(PlacementError::Invalid(_))
    ));
    p.check().unwrap();
}

#[test]
fn a_rebalance_asked_anywhere_stays_pending_until_one_is_done_after_it() {
    let mut p = three();
    assert!(!p.rebalance_pending());
    let v = p.version();
    p.apply(None, Change::AskRebalance).unwrap();
    assert!(p.rebalance_pending());
    assert_eq!(p.version(), v + 1);
    // Planned with one request; another asked meanwhile stays pending.
    let asked = p.rebalances_asked();
    p.apply(None, Change::AskRebalance).unwrap();
    p.apply(None, Change::RebalanceDone { asked }).unwrap();
    assert!(p.rebalance_pending());
    p.apply(
        None,
        Change::RebalanceDone {
            asked: p.rebalances_asked(),
        },
    )
    .unwrap();
    assert!(!p.rebalance_pending());
    // Done again, or for more than was asked: nothing changes.
    let v = p.version();
    p.apply(None, Change::RebalanceDone { asked: 99 }).unwrap();
    assert_eq!(p.version(), v);
    assert!(!p.rebalance_pending());
    // Stored and read back; a placement stored before these counters
    // existed reads as nothing asked.
    let json = serde_json::to_string(&p).unwrap();
    let back: Placement = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("rebalances_asked");
    fields.remove("rebalances_done");
    let old: Placement = serde_json::from_value(old).unwrap();
    assert_eq!(old.rebalances_asked(), 0);
    assert!(!old.rebalance_pending());
}
