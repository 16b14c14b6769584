//! A set of runs, written batch by batch and merged whenever its plan says, against a map in
//! which later batches overwrite earlier ones.

use super::*;

/// Batches written as runs, merged whenever the plan says: every lookup answers what a map
/// with later batches overwriting earlier ones answers, and the runs stay few.
fn check_run_set(batches: Vec<Vec<u128>>) {
    run(async move {
        let disk = SimDisk::new();
        let mut set = RunSet::default();
        let mut model = BTreeMap::new();
        let mut next_id = 0;
        for (version, mut batch) in batches.into_iter().enumerate() {
            batch.sort_unstable();
            batch.dedup();
            let entries: Vec<(u128, Value)> = batch.iter().map(|&k| (k, value(k, version as u64))).collect();
            model.extend(entries.iter().copied());
            next_id += 1;
            set.push(Rc::new(write(&disk, next_id, 0, &entries).await.unwrap()));
            while let Some((range, level, _)) = set.merge_plan() {
                next_id += 1;
                let merged = merge(&disk, PREFIX, next_id, level, SHAPE, &set.runs()[range.clone()]).await.unwrap();
                set.replace(range, Rc::new(merged));
            }
            let levels: Vec<u32> = set.runs().iter().map(|run| run.level()).collect();
            assert!(levels.windows(2).all(|w| w[0] >= w[1]), "levels {levels:?}");
            let top = u64::from(levels[0]);
            assert!(set.runs().len() as u64 <= (MERGE_FANOUT as u64 - 1) * (top + 1), "levels {levels:?}");
        }
        let reopened: Vec<_> = {
            let mut runs = Vec::new();
            for run in set.runs() {
                let reopened = Run::open(&disk, PREFIX, run.id(), VALUE_BYTES).await.unwrap();
                reopened.read_filter().await.unwrap();
                runs.push(Rc::new(reopened));
            }
            runs
        };
        let clone = set.clone();
        for set in [set, RunSet::from_runs(reopened)] {
            assert_eq!(set.memory_bytes(), clone.memory_bytes());
            assert_eq!(set.file_bytes(), clone.file_bytes());
            assert!(set.entries() >= model.len() as u64);
            for key in 0..3_100u128 {
                let want = model.get(&key).copied();
                assert_eq!(set.get(key).await.unwrap(), want, "key {key}");
                if want.is_some() {
                    assert!(set.may_hold(key));
                }
            }
        }
    });
}

fn batches() -> impl proptest::strategy::Strategy<Value = Vec<Vec<u128>>> {
    proptest::collection::vec(proptest::collection::vec(0u128..3_000, 1..200), 1..40)
}

// Two tests of twelve cases each rather than one of twenty-four: the test threads run them side
// by side.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    #[test]
    fn a_run_set_answers_like_a_map(batches in batches()) {
        check_run_set(batches);
    }

    #[test]
    fn a_run_set_answers_like_a_map_in_more_cases(batches in batches()) {
        check_run_set(batches);
    }
}
