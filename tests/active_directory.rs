//! Active Directory end to end: a real Samba AD DC (provisioned once, LDAPS with a test CA) and
//! a real Synapse, through the real binary with the `mappings/active-directory.toml` preset.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::ad_site::{AdSite, Agent};
use common::site::{Run, Settings};
use serde_json::Value;

fn user(site: &AdSite, mxid: &str) -> Value {
    site.synapse
        .get_user(mxid)
        .unwrap_or_else(|| panic!("{mxid} does not exist"))
}

fn emails(user: &Value) -> Vec<String> {
    user["threepids"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["medium"] == "email")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}

fn all_output(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

#[test]
fn agents_are_created_from_ad_attributes_over_ldaps_with_the_test_ca() {
    let site = AdSite::new("create");
    site.add_agent(Agent {
        name: "anne",
        given: "Anne",
        sn: "Leroy",
        department: Some("DSI"),
        mail: Some("anne.leroy@example.org"),
    });
    site.add_agent(Agent {
        name: "paul",
        given: "Paul",
        sn: "Girard",
        ..Agent::default()
    });
    let run = site.sync_ok();
    assert!(run.stdout.contains("2 applied"), "{}", all_output(&run));

    let anne = user(&site, &site.mxid("anne"));
    assert_eq!(anne["displayname"], "Anne Leroy [DSI]");
    assert_eq!(emails(&anne), vec!["anne.leroy@example.org"]);
    let paul = user(&site, &site.mxid("paul"));
    assert_eq!(paul["displayname"], "Paul Girard");
    assert_eq!(emails(&paul), Vec::<String>::new());
}

#[test]
fn ldaps_without_the_test_ca_is_an_untrusted_certificate_error() {
    let site = AdSite::new("untrusted");
    site.configure(&Settings {
        no_ca_file: true,
        ..Settings::default()
    });
    let run = site.run(&["check"]);
    assert_ne!(run.code, 0, "{}", all_output(&run));
    let out = all_output(&run);
    assert!(
        out.contains("FAILED  directory bind: TLS with ldaps://localhost")
            && out.contains("the server certificate is not trusted")
            && out.contains("directory.ca_file"),
        "{out}"
    );
}
