//! `dispersy demo --forum`: the moderated forum plugin across three nodes, each a separate
//! process, driven through their control APIs as a user would.
//!
//! node1 creates a forum (it keeps the master secret and founds it) and appoints node2
//! moderator (`permit` on `thread`, `undo` on `post` and `thread`); node3 joins by the master
//! key. node1 opens a thread; node3 posts in it, posts spam, and edits its first post (undo-own
//! and a new post that replaces it); node2 undoes the spam (undo-other); everyone votes; node1
//! and node2 co-sign an endorsement; node1 switches posting to moderated mode (linear), after
//! which node3's post is refused. The demo ends when the three nodes show the same forum, and
//! prints it.

use std::time::Duration;

use serde_json::{Value, json};

use super::{DemoError, Network, Options, Process, api_error, plugin_dir};
use crate::client::ClientError;

/// What the forum demo saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Whether the three nodes ended with the same forum (threads, visible posts, votes,
    /// endorsements).
    pub agreed: bool,
    /// Visible posts on node3 at the end.
    pub posts: u64,
    /// Messages node3's plugin was told were hidden (undone).
    pub hidden: u64,
    /// Whether node3's post after the switch to moderated mode was refused.
    pub moderated: bool,
}

/// Runs the forum demo, printing progress to stdout.
pub async fn run(options: Options) -> Result<Summary, DemoError> {
    let plugin_dir = plugin_dir(&options, "forum_community")?;
    let options = Options {
        nodes: 3,
        ..options
    };
    let network = Network::start(&options, &plugin_dir).await?;
    let result = forum(network.nodes(), &options).await;
    network.stop().await;
    result
}

/// A failed or unexpected answer of `process`.
fn unexpected(process: &Process, what: &str, answer: &Value) -> DemoError {
    DemoError::Api {
        what: process.name.clone(),
        source: ClientError::Status {
            status: 0,
            body: format!("{what}: {answer}"),
        },
    }
}

/// `POST path body` at `process`.
async fn post(process: &Process, path: &str, body: Value) -> Result<Value, DemoError> {
    process
        .client
        .post(path, &body)
        .await
        .map_err(api_error(process))
}

/// Polls `check` every 200 ms until it answers true or `timeout` passes; false then.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> Result<bool, DemoError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, DemoError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The forum plugin's status at `process` for community `id`.
async fn status(process: &Process, id: &str) -> Result<Value, DemoError> {
    let list = process
        .client
        .get("/v1/communities")
        .await
        .map_err(api_error(process))?;
    Ok(list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["id"] == id))
        .map(|c| c["plugin"]["status"].clone())
        .unwrap_or(Value::Null))
}

/// A message reference (`{"author", "global_time"}`) of a message `process` created.
fn reference(process: &Process, member: &str, created: &Value) -> Result<Value, DemoError> {
    let global_time = created["global_time"]
        .as_u64()
        .ok_or_else(|| unexpected(process, "created message", created))?;
    Ok(json!({"author": member, "global_time": global_time}))
}

/// The body of `POST .../undo` for the message `reference` names.
fn undo_of(reference: &Value) -> Value {
    json!({"member": reference["author"], "global_time": reference["global_time"]})
}

async fn forum(nodes: &[Process], options: &Options) -> Result<Summary, DemoError> {
    let [n1, n2, n3] = nodes else {
        return Err(DemoError::Api {
            what: "forum demo".into(),
            source: ClientError::Malformed,
        });
    };
    let mut members = Vec::new();
    for node in nodes {
        let info = node.client.get("/v1/node").await.map_err(api_error(node))?;
        let member = info["member"]
            .as_str()
            .ok_or_else(|| unexpected(node, "node info", &info))?;
        members.push(member.to_owned());
    }
    let (m1, m2, m3) = (&members[0], &members[1], &members[2]);

    println!("\nnode1 creates a forum (it keeps the master secret and founds it)");
    let created = post(n1, "/v1/communities", json!({"type": "forum"})).await?;
    let (Some(id), Some(master)) = (
        created["community"].as_str(),
        created["master_key"].as_str(),
    ) else {
        return Err(unexpected(n1, "create", &created));
    };
    println!("  forum {id}, master key {master}");
    for node in [n2, n3] {
        post(
            node,
            "/v1/communities",
            json!({"type": "forum", "master_key": master}),
        )
        .await?;
        println!("  {} joined it by the master key", node.name);
    }
    let base = format!("/v1/communities/{id}");
    let founded = eventually(options.timeout, || async {
        let timeline = n1
            .client
            .get(&format!("{base}/timeline"))
            .await
            .map_err(api_error(n1))?;
        Ok(timeline["holdings"].as_array().is_some_and(|h| {
            h.iter()
                .any(|h| h["meta"] == "thread" && h["permission"] == "authorize")
        }))
    })
    .await?;
    if !founded {
        return Err(unexpected(n1, "founding", &json!("not founded in time")));
    }
    let discovered = eventually(options.timeout, || async {
        for node in nodes {
            let list = node
                .client
                .get(&format!("{base}/candidates"))
                .await
                .map_err(api_error(node))?;
            let verified = list
                .as_array()
                .map_or(0, |l| l.iter().filter(|c| c["verified"] == true).count());
            if verified < 2 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    println!(
        "  discovery {}",
        if discovered { "complete" } else { "incomplete" }
    );

    println!("\nnode1 appoints node2 moderator");
    let grants = json!([
        {"meta": "thread", "permission": "permit"},
        {"meta": "thread", "permission": "undo"},
        {"meta": "post", "permission": "undo"},
    ]);
    post(
        n1,
        &format!("{base}/authorize"),
        json!({"member": m2, "grants": grants}),
    )
    .await?;

    println!("\nnode1 opens a thread; node3 posts, spams and edits; node2 moderates");
    let thread = post(
        n1,
        &format!("{base}/messages"),
        json!({"meta": "thread", "payload": {"title": "Welcome", "body": "Say hello."}}),
    )
    .await?;
    let thread = reference(n1, m1, &thread)?;
    let message = |meta: &str, payload: Value| json!({"meta": meta, "payload": payload});
    let hello = post(
        n3,
        &format!("{base}/messages"),
        message("post", json!({"thread": thread, "body": "helo"})),
    )
    .await?;
    let hello = reference(n3, m3, &hello)?;
    let spam = post(
        n3,
        &format!("{base}/messages"),
        message("post", json!({"thread": thread, "body": "CHEAP WATCHES"})),
    )
    .await?;
    let spam = reference(n3, m3, &spam)?;
    // An edit: a new post replacing the old one, and the author's undo of the old one.
    post(
        n3,
        &format!("{base}/messages"),
        message(
            "post",
            json!({"thread": thread, "body": "hello, everyone", "replaces": hello}),
        ),
    )
    .await?;
    post(n3, &format!("{base}/undo"), undo_of(&hello)).await?;
    println!("  node3 edited its post (undo-own and a new post)");
    // The moderator needs node3's spam before it can undo it.
    let arrived = eventually(options.timeout, || async {
        let s = status(n2, id).await?;
        Ok(s["counts"]["posts"].as_u64().unwrap_or(0) >= 2)
    })
    .await?;
    if !arrived {
        return Err(unexpected(
            n2,
            "sync",
            &json!("node3's posts did not arrive"),
        ));
    }
    post(n2, &format!("{base}/undo"), undo_of(&spam)).await?;
    println!("  node2 undid node3's spam (undo-other)");
    for (node, up) in [(n1, true), (n2, true), (n3, false)] {
        post(
            node,
            &format!("{base}/messages"),
            message("vote", json!({"target": thread, "up": up})),
        )
        .await?;
    }
    println!("  everyone voted on the thread");

    println!("\nnode1 and node2 co-sign an endorsement of node3's edited post");
    let endorsed = eventually(options.timeout, || async {
        let s = status(n1, id).await?;
        let posts = s["threads"][0]["posts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let Some(edited) = posts.iter().find(|p| p["edited"] == true) else {
            return Ok(false);
        };
        let answer = n1
            .client
            .post(
                &format!("{base}/messages"),
                &json!({
                    "meta": "endorse",
                    "payload": {"target": edited["ref"], "note": "a model first post"},
                    "co_signer": {"public_key": m2, "address": n2.udp.to_string()},
                }),
            )
            .await;
        Ok(answer.is_ok())
    })
    .await?;
    println!(
        "  endorsement {}",
        if endorsed {
            "signed by both"
        } else {
            "not signed"
        }
    );

    println!("\nnode1 switches posting to moderated mode (linear)");
    post(
        n1,
        &format!("{base}/settings"),
        json!({"meta": "post", "policy": "linear"}),
    )
    .await?;
    // node3 holds no permit: once it knows the setting, its post is refused.
    let moderated = eventually(options.timeout, || async {
        let (code, _) = n3
            .client
            .raw(
                "POST",
                &format!("{base}/messages"),
                Some(message("post", json!({"thread": thread, "body": "still here?"})).to_string()),
                Some(n3.client.token()),
            )
            .await
            .map_err(api_error(n3))?;
        Ok(code == 403)
    })
    .await?;
    println!(
        "  node3's new post {}",
        if moderated {
            "refused (403)"
        } else {
            "accepted"
        }
    );

    println!("\nwaiting for the three nodes to agree");
    let deadline = tokio::time::Instant::now() + options.timeout;
    let (agreed, last) = loop {
        let mut views = Vec::new();
        for node in nodes {
            let s = status(node, id).await?;
            views.push(json!({"threads": s["threads"], "counts": {
                "threads": s["counts"]["threads"],
                "posts": s["counts"]["posts"],
                "votes": s["counts"]["votes"],
                "endorsements": s["counts"]["endorsements"],
            }}));
        }
        let same = views.windows(2).all(|w| w[0] == w[1]);
        if same || tokio::time::Instant::now() >= deadline {
            break (same, views);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let view = last.last().cloned().unwrap_or(Value::Null);
    println!("\nthe forum as node3 sees it:");
    for thread in view["threads"].as_array().into_iter().flatten() {
        println!(
            "  [{}] {} (score {})",
            thread["ref"]["global_time"], thread["title"], thread["score"]
        );
        for p in thread["posts"].as_array().into_iter().flatten() {
            let author = p["ref"]["author"].as_str().unwrap_or("");
            let who = members
                .iter()
                .position(|m| m == author)
                .map_or("?".to_owned(), |i| format!("node{}", i + 1));
            println!(
                "    {who}: {}{}",
                p["body"],
                if p["edited"] == true { " (edited)" } else { "" }
            );
            for e in p["endorsed"].as_array().into_iter().flatten() {
                println!("      endorsed: {} ({})", e["note"], e["seconded"]);
            }
        }
    }
    let counts = &view["counts"];
    let node3 = status(n3, id).await?;
    let summary = Summary {
        agreed,
        posts: counts["posts"].as_u64().unwrap_or(0),
        hidden: node3["counts"]["undone"].as_u64().unwrap_or(0),
        moderated,
    };
    println!(
        "\nsummary: forum {}, {} posts shown, {} hidden (undone), moderated mode {}, endorsement {}",
        if agreed {
            "identical on all three nodes"
        } else {
            "DIFFERENT between nodes"
        },
        summary.posts,
        summary.hidden,
        if moderated {
            "enforced"
        } else {
            "NOT enforced"
        },
        if endorsed { "co-signed" } else { "missing" },
    );
    Ok(summary)
}
