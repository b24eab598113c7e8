//! A CaptureQuota written to a real `redis-server` through capture's quota
//! library reads back as written, and its removal is idempotent.

mod common;

use capture::policy::QuotaType;
use common::redis::RedisServer;
use operator::crd::CaptureQuotaSpec;
use serde_json::json;

#[tokio::test]
async fn a_quota_round_trips_through_redis_and_deletes_idempotently() {
    let redis = RedisServer::start();
    let admin = common::redis_admin(&redis, "op:");
    let spec: CaptureQuotaSpec = serde_json::from_value(json!({
        "deployment": "capture",
        "token": "phc_op_test",
        "action": "drop",
        "limits": [
            {"eventType": "events", "limit": 500, "window": "1h"},
            {"eventType": "exceptions", "rate": 5, "burst": 20},
        ],
    }))
    .expect("spec");
    let settings = operator::quota::settings(&spec).expect("valid");
    admin.set(&spec.token, &settings).await.expect("written");

    let status = admin.get(&spec.token).await.expect("read");
    assert_eq!(
        status.settings, settings,
        "what capture reads is what was written"
    );
    let usage = operator::quota::usage(&status);
    assert_eq!(usage.len(), 1, "only limited types have usage: {usage:?}");
    assert_eq!(
        (
            usage[0].event_type.as_str(),
            usage[0].used,
            usage[0].remaining
        ),
        ("events", 0, 500)
    );
    assert_eq!(redis.cli(&["exists", "op:quota-config:{phc_op_test}"]), "1");

    // The finalizer's cleanup: twice, as a retried reconcile would.
    admin.delete(&spec.token).await.expect("deleted");
    admin
        .delete(&spec.token)
        .await
        .expect("deleting again is fine");
    let status = admin.get(&spec.token).await.expect("read");
    assert!(status.settings.types.is_empty());
    assert!(!status.usage.contains_key(&QuotaType::Events));
    assert_eq!(redis.cli(&["dbsize"]), "0");
}
