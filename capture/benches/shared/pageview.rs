//! The event the plugin and message benches run on: a `$pageview` of
//! about 1.2 KB, with the properties posthog-js sends.

use serde_json::json;

/// The `n`th event: its distinct id, URL and insert id vary with `n`.
pub fn event(n: u64) -> String {
    json!({
        "event": "$pageview",
        "distinct_id": format!("user-{}", n % 5000),
        "timestamp": "2024-06-01T12:00:00.000Z",
        "properties": {
            "$os": "Mac OS X", "$os_version": "14.5.0", "$browser": "Chrome",
            "$browser_version": 125, "$device_type": "Desktop",
            "$current_url": format!("https://app.example.com/project/1/insights?n={n}"),
            "$host": "app.example.com", "$pathname": "/project/1/insights",
            "$raw_user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/125.0.0.0 Safari/537.36",
            "$screen_height": 1117, "$screen_width": 1728, "$viewport_height": 959, "$viewport_width": 1728,
            "$lib": "web", "$lib_version": "1.139.0", "$insert_id": format!("{n:016x}"),
            "$time": 1717243200.123, "$device_id": "0190b0e1-0000-7000-8000-000000000001",
            "$session_id": "0190b0e1-0000-7000-8000-000000000002",
            "$window_id": "0190b0e1-0000-7000-8000-000000000003",
            "$pageview_id": "0190b0e1-0000-7000-8000-000000000004",
            "$referrer": "https://www.google.com/", "$referring_domain": "www.google.com",
            "$active_feature_flags": ["new-onboarding", "insights-v2"],
            "$feature/new-onboarding": true, "$feature/insights-v2": "test",
            "utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "june-launch",
            "$is_identified": true, "$process_person_profile": true, "title": "Insights • PostHog",
        },
    })
    .to_string()
}
