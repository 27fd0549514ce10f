//! Upstream's validation of CronJobs (`ValidateCronJobCreate`, `ValidateCronJobSpec`): the
//! schedule parses (with the cron parser's own texts), the time zone is one the tz database
//! knows, the policy is known and the counts are not negative, the job template is a Job's
//! with no selector of its own, and a new CronJob's name leaves room for the suffix its Jobs
//! get.

use serde_json::Value;

use super::{labels, non_negative, pod_template_spec, restart_policy_of_job};
use crate::status::FieldCause;

/// Upstream's limit: a Job's name (at most 63 characters) is the CronJob's plus
/// `-` and the scheduled time in minutes (up to 10 digits).
const MAX_NAME_LENGTH: usize = 52;

/// The checks of a new CronJob beyond those of every write.
pub fn create(obj: &Value, causes: &mut Vec<FieldCause>) {
    let name = &obj["metadata"]["name"];
    if name.as_str().is_some_and(|n| n.len() > MAX_NAME_LENGTH) {
        causes.push(FieldCause::invalid(
            "metadata.name",
            name,
            format!("must be no more than {MAX_NAME_LENGTH} characters"),
        ));
    }
}

/// The checks of a CronJob's spec.
pub fn spec(obj: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &obj["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => causes.push(FieldCause::required("spec.schedule", "")),
        Some(schedule) => {
            if let Err(e) = baton_cron::Schedule::parse(schedule) {
                causes.push(FieldCause::invalid(
                    "spec.schedule",
                    &spec["schedule"],
                    e.to_string(),
                ));
            }
            if schedule.contains("TZ") {
                causes.push(FieldCause::invalid(
                    "spec.schedule",
                    &spec["schedule"],
                    "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
                ));
            }
        }
    }
    non_negative(spec, "spec", "startingDeadlineSeconds", causes);
    match spec["concurrencyPolicy"].as_str() {
        Some("Allow" | "Forbid" | "Replace") => {}
        None | Some("") => causes.push(FieldCause::required("spec.concurrencyPolicy", "")),
        Some(other) => causes.push(FieldCause::not_supported(
            "spec.concurrencyPolicy",
            other,
            &["Allow", "Forbid", "Replace"],
        )),
    }
    job_template(&spec["jobTemplate"], causes);
    for field in ["successfulJobsHistoryLimit", "failedJobsHistoryLimit"] {
        non_negative(spec, "spec", field, causes);
    }
    if let Some(zone) = spec.get("timeZone").filter(|z| !z.is_null()) {
        time_zone(zone, causes);
    }
}

/// Upstream's `validateTimeZone`: a name of path-safe parts that the tz database knows,
/// never `Local`.
fn time_zone(zone: &Value, causes: &mut Vec<FieldCause>) {
    const FIELD: &str = "spec.timeZone";
    let name = zone.as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(FieldCause::invalid(
            FIELD,
            zone,
            "timeZone must be nil or non-empty string",
        ));
        return;
    }
    let part_ok = |part: &str| {
        part != "."
            && part != ".."
            && !part.starts_with('-')
            && (1..=14).contains(&part.len())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
    };
    if !name.split('/').all(part_ok) {
        causes.push(FieldCause::invalid(
            FIELD,
            zone,
            format!("unknown time zone {name}"),
        ));
        return;
    }
    if name.eq_ignore_ascii_case("Local") {
        causes.push(FieldCause::invalid(
            FIELD,
            zone,
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
        ));
    } else if let Err(e) = baton_cron::time_zone(name) {
        causes.push(FieldCause::invalid(FIELD, zone, e.to_string()));
    }
}

/// Upstream's `ValidateJobTemplateSpec`: a Job spec whose selector is generated.
fn job_template(template: &Value, causes: &mut Vec<FieldCause>) {
    let spec = &template["spec"];
    let at = "spec.jobTemplate.spec";
    for field in ["parallelism", "completions", "backoffLimit"] {
        non_negative(spec, at, field, causes);
    }
    let pod_template = &spec["template"];
    labels(
        &pod_template["metadata"]["labels"],
        &format!("{at}.template.metadata.labels"),
        causes,
    );
    let pod = &pod_template["spec"];
    pod_template_spec(pod, &format!("{at}.template.spec"), causes);
    restart_policy_of_job(pod, &format!("{at}.template.spec"), causes);
    if let Some(selector) = spec.get("selector").filter(|s| !s.is_null()) {
        causes.push(FieldCause::invalid(
            format!("{at}.selector"),
            selector,
            "`selector` will be auto-generated",
        ));
    }
    if spec["manualSelector"] == Value::Bool(true) {
        causes.push(FieldCause::not_supported(
            format!("{at}.manualSelector"),
            "true",
            &["nil", "false"],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn messages(obj: &Value, creating: bool) -> Vec<String> {
        let mut causes = vec![];
        spec(obj, &mut causes);
        if creating {
            create(obj, &mut causes);
        }
        causes.iter().map(ToString::to_string).collect()
    }

    fn cron_job(schedule: &str) -> Value {
        json!({
            "metadata": {"name": "hello"},
            "spec": {
                "schedule": schedule,
                "concurrencyPolicy": "Allow",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "busybox"}]
                }}}}
            }
        })
    }

    #[test]
    fn a_good_cron_job_passes() {
        assert!(messages(&cron_job("*/5 * * * *"), true).is_empty());
        let mut zoned = cron_job("@daily");
        zoned["spec"]["timeZone"] = json!("Europe/Berlin");
        assert!(messages(&zoned, true).is_empty());
    }

    #[test]
    fn schedule_zone_and_template_errors_name_their_fields() {
        assert_eq!(
            messages(&cron_job("61 * * * *"), false),
            [
                "spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"
            ]
        );
        assert_eq!(
            messages(&cron_job("TZ=UTC * * * * *"), false),
            [
                "spec.schedule: Invalid value: \"TZ=UTC * * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
        let mut zoned = cron_job("* * * * *");
        zoned["spec"]["timeZone"] = json!("Mars/Olympus");
        assert_eq!(
            messages(&zoned, false),
            ["spec.timeZone: Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus"]
        );
        zoned["spec"]["timeZone"] = json!("Local");
        assert_eq!(
            messages(&zoned, false).concat(),
            "spec.timeZone: Invalid value: \"Local\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
        );
        let mut bad = cron_job("* * * * *");
        bad["spec"]["concurrencyPolicy"] = json!("Sometimes");
        bad["spec"]["startingDeadlineSeconds"] = json!(-1);
        bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        bad["spec"]["jobTemplate"]["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        assert_eq!(
            messages(&bad, false),
            [
                "spec.startingDeadlineSeconds: Invalid value: -1: must be greater than or equal to 0",
                "spec.concurrencyPolicy: Unsupported value: \"Sometimes\": supported values: \"Allow\", \"Forbid\", \"Replace\"",
                "spec.jobTemplate.spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\"",
                "spec.jobTemplate.spec.selector: Invalid value: {\"matchLabels\":{\"a\":\"b\"}}: `selector` will be auto-generated",
            ]
        );
    }

    #[test]
    fn template_labels_are_checked() {
        let mut bad = cron_job("* * * * *");
        bad["spec"]["jobTemplate"]["spec"]["template"]["metadata"] =
            json!({"labels": {"app": "-bad-"}});
        let got = messages(&bad, false);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "spec.jobTemplate.spec.template.metadata.labels: Invalid value: \"-bad-\""
            ),
            "{got:?}"
        );
    }

    #[test]
    fn a_new_name_leaves_room_for_the_job_suffix() {
        let mut long = cron_job("* * * * *");
        long["metadata"]["name"] = json!("a".repeat(53));
        assert_eq!(
            messages(&long, true),
            [format!(
                "metadata.name: Invalid value: \"{}\": must be no more than 52 characters",
                "a".repeat(53)
            )]
        );
        // Only on create: an existing CronJob keeps working.
        assert!(messages(&long, false).is_empty());
    }
}
