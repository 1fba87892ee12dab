//! What the gateway's tests and its benchmark stand on: devcluster with Alcove's CRDs and the
//! namespaces the instances and the gateway live in. No operator runs: they write an instance's
//! status as the operator would leave it.

use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// devcluster in `dir` with the CRDs installed and `namespaces` created, and an admin client.
pub async fn cluster(
    dir: &Path,
    namespaces: &[&str],
) -> (alcove_devcluster::DevCluster, kube::Client) {
    let cluster = alcove_devcluster::DevCluster::start(alcove_devcluster::Config::new(dir))
        .await
        .expect("devcluster");
    let client = cluster.client().await.expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in alcove_crds::crds() {
        let name = crd.metadata.name.clone().expect("a CRD's name");
        crds.patch(&name, &PatchParams::apply("gateway-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("the CRDs");
    }
    let api: Api<Namespace> = Api::all(client.clone());
    for ns in namespaces {
        let body = serde_json::json!({"metadata": {"name": ns}});
        api.create(&PostParams::default(), &serde_json::from_value(body).expect("a namespace"))
            .await
            .expect("the namespaces");
    }
    (cluster, client)
}
