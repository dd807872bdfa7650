//! Software bills of materials for a published revision, from its package manifest: SPDX
//! 2.3 JSON (`NAME-rN.spdx.json`) and CycloneDX 1.6 JSON (`NAME-rN.cdx.json`). The image is
//! the described component (its file name and the sha512 the index names); every installed
//! package is a component of it with its version, architecture, source package, a purl and
//! the licences its copyright file declares. Both are a function of the manifest alone (their
//! identifiers and times come from it), and the manifest names their digests, so the
//! manifest's signature covers them.

use super::manifest::{Manifest, OperatingSystem};
use crate::guest::Package;
use serde_json::{json, Value};

/// The file suffixes of the two documents, after `NAME-rN`.
pub const SPDX_SUFFIX: &str = ".spdx.json";
pub const CYCLONEDX_SUFFIX: &str = ".cdx.json";

/// The documents' file names beside the image file `image_file` (`NAME-r3.xz` gives
/// `NAME-r3.spdx.json` and `NAME-r3.cdx.json`).
pub fn document_names(image_file: &str) -> [String; 2] {
    let stem = image_file.strip_suffix(".xz").unwrap_or(image_file);
    [format!("{stem}{SPDX_SUFFIX}"), format!("{stem}{CYCLONEDX_SUFFIX}")]
}

/// The documents of a revision whose image file is `image_file`: (file name, content).
pub fn documents(manifest: &Manifest, image_file: &str) -> Vec<(String, Vec<u8>)> {
    let [spdx_name, cyclonedx_name] = document_names(image_file);
    let pretty = |v: Value| {
        let mut text = serde_json::to_vec_pretty(&v).expect("a JSON value serializes");
        text.push(b'\n');
        text
    };
    vec![(spdx_name, pretty(spdx(manifest, image_file))), (cyclonedx_name, pretty(cyclonedx(manifest, image_file)))]
}

/// Adds the documents' digests to the manifest (which its signature then covers) and
/// returns them to be written beside the image.
pub fn attach(manifest: &mut Manifest, image_file: &str) -> Vec<(String, Vec<u8>)> {
    use sha2::{Digest, Sha512};
    let docs = documents(manifest, image_file);
    manifest.documents = docs.iter().map(|(name, bytes)| (name.clone(), hex::encode(Sha512::digest(bytes)))).collect();
    docs
}

/// The tool as both formats name their creator.
fn tool_version() -> String {
    format!("virt-pipeline-{}", env!("CARGO_PKG_VERSION"))
}

/// A name-based UUID for the revision: the same manifest always gives the same document.
fn revision_uuid(manifest: &Manifest, what: &str) -> uuid::Uuid {
    let name = format!("virt-pipeline:{what}:{}:{}", manifest.entry, manifest.image_sha512);
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
}

/// The package's purl: `pkg:deb/debian/NAME@VERSION?arch=ARCH&distro=debian-12`, the rpm
/// form for rpm systems (with `epoch` as a qualifier), none for other package formats.
pub fn purl(p: &Package, os: Option<&OperatingSystem>) -> Option<String> {
    let os = os?;
    let ty = match os.package_format.as_str() {
        "deb" | "rpm" => os.package_format.as_str(),
        _ => return None,
    };
    let mut purl = packageurl::PackageUrl::new(ty, p.name.as_str()).ok()?;
    purl.with_namespace(os.distro.as_str());
    let version = match (ty, p.version.split_once(':')) {
        // rpm's purl carries the epoch as a qualifier; deb's keeps it in the version.
        ("rpm", Some((epoch, rest))) if epoch.chars().all(|c| c.is_ascii_digit()) => {
            purl.add_qualifier("epoch", epoch.to_string()).ok()?;
            rest
        }
        _ => p.version.as_str(),
    };
    purl.with_version(version);
    if !p.arch.is_empty() {
        purl.add_qualifier("arch", p.arch.as_str()).ok()?;
    }
    // The release, as purl-spec's examples name it (`debian-12`, `fedora-40`), not the point
    // release (12.8) the image happens to have.
    let release = os.version.split('.').next().unwrap_or(&os.version);
    purl.add_qualifier("distro", format!("{}-{release}", os.distro)).ok()?;
    Some(purl.to_string())
}

/// SPDX identifiers of the licence names Debian's copyright files use most.
const DEBIAN_TO_SPDX: &[(&str, &str)] = &[
    ("GPL-1", "GPL-1.0-only"),
    ("GPL-1+", "GPL-1.0-or-later"),
    ("GPL-2", "GPL-2.0-only"),
    ("GPL-2+", "GPL-2.0-or-later"),
    ("GPL-3", "GPL-3.0-only"),
    ("GPL-3+", "GPL-3.0-or-later"),
    ("LGPL-2", "LGPL-2.0-only"),
    ("LGPL-2+", "LGPL-2.0-or-later"),
    ("LGPL-2.1", "LGPL-2.1-only"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"),
    ("LGPL-3", "LGPL-3.0-only"),
    ("LGPL-3+", "LGPL-3.0-or-later"),
    ("AGPL-3", "AGPL-3.0-only"),
    ("AGPL-3+", "AGPL-3.0-or-later"),
    ("GFDL-1.2+", "GFDL-1.2-or-later"),
    ("GFDL-1.3+", "GFDL-1.3-or-later"),
    ("Apache-2", "Apache-2.0"),
    ("Apache-2.0", "Apache-2.0"),
    ("Expat", "MIT"),
    ("MIT", "MIT"),
    ("BSD-2-clause", "BSD-2-Clause"),
    ("BSD-3-clause", "BSD-3-Clause"),
    ("BSD-4-clause", "BSD-4-Clause"),
    ("ISC", "ISC"),
    ("Zlib", "Zlib"),
    ("Artistic", "Artistic-1.0-Perl"),
    ("Artistic-2.0", "Artistic-2.0"),
    ("MPL-1.1", "MPL-1.1"),
    ("MPL-2.0", "MPL-2.0"),
    ("CC0-1.0", "CC0-1.0"),
    ("PSF-2", "PSF-2.0"),
    ("OpenSSL", "OpenSSL"),
    ("curl", "curl"),
    ("X11", "X11"),
    ("BSL-1.0", "BSL-1.0"),
    ("FSFAP", "FSFAP"),
    ("FSFUL", "FSFUL"),
    ("FSFULLR", "FSFULLR"),
    ("Unlicense", "Unlicense"),
    ("WTFPL", "WTFPL"),
];

/// A Debian licence name as an SPDX identifier, when it is one of [`DEBIAN_TO_SPDX`].
fn spdx_id(name: &str) -> Option<&'static str> {
    DEBIAN_TO_SPDX.iter().find(|(debian, _)| debian.eq_ignore_ascii_case(name)).map(|(_, id)| *id)
}

/// `LicenseRef-…` for a licence name SPDX has no identifier for (only letters, digits, `.`
/// and `-` are allowed in it).
fn license_ref(name: &str) -> String {
    let id: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
    match id.trim_matches('-') {
        // Nothing left to name it by (not ASCII): named by its digest instead.
        "" => {
            use sha2::Digest;
            format!("LicenseRef-{}", &hex::encode(sha2::Sha256::digest(name.as_bytes()))[..16])
        }
        id => format!("LicenseRef-{id}"),
    }
}

/// One `License:` name as an SPDX expression: `A or B` becomes `(A OR B)`; a name without an
/// SPDX identifier (or with an exception, `GPL-2+ with OpenSSL exception`) a LicenseRef.
/// Returns the expression and the LicenseRefs it uses with their names.
fn expression(name: &str) -> (String, Vec<(String, String)>) {
    let mut refs = Vec::new();
    let mut term = |part: &str| match spdx_id(part) {
        Some(id) => id.to_string(),
        None => {
            let r = license_ref(part);
            refs.push((r.clone(), part.to_string()));
            r
        }
    };
    let alternatives: Vec<&str> = split_words(name, "or");
    let expr = if alternatives.len() > 1 && !name.to_lowercase().contains(" with ") {
        format!("({})", alternatives.iter().map(|a| term(a)).collect::<Vec<_>>().join(" OR "))
    } else {
        term(name)
    };
    (expr, refs)
}

/// `text` split at the whole word `word` (any case), each part trimmed (and of a trailing comma).
fn split_words<'t>(text: &'t str, word: &str) -> Vec<&'t str> {
    // ASCII case only: byte offsets in `lower` must be those of `text` (the name is image data).
    let lower = text.to_ascii_lowercase();
    let sep = format!(" {word} ");
    let mut parts = Vec::new();
    let mut start = 0;
    while let Some(i) = lower[start..].find(&sep) {
        parts.push(text[start..start + i].trim().trim_end_matches(','));
        start += i + sep.len();
    }
    parts.push(text[start..].trim().trim_end_matches(','));
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The SPDX 2.3 document (JSON).
pub fn spdx(m: &Manifest, image_file: &str) -> Value {
    let mut packages = vec![json!({
        "SPDXID": "SPDXRef-Image",
        "name": m.entry,
        "packageFileName": image_file,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "checksums": [{ "algorithm": "SHA512", "checksumValue": m.image_sha512 }],
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "description": describe_image(m),
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    let mut extracted: std::collections::BTreeMap<String, String> = Default::default();
    for (i, p) in m.packages.iter().enumerate() {
        let id = format!("SPDXRef-Package-{}-{}", i + 1, license_ref(&p.name).trim_start_matches("LicenseRef-"));
        let mut declared = Vec::new();
        for name in &p.licenses {
            let (expr, refs) = expression(name);
            declared.push(expr);
            for (r, n) in refs {
                extracted.entry(r).or_insert(n);
            }
        }
        let mut package = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "primaryPackagePurpose": "LIBRARY",
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": if declared.is_empty() { "NOASSERTION".to_string() } else { declared.join(" AND ") },
            "copyrightText": "NOASSERTION",
        });
        if let Some(source) = &p.source {
            package["sourceInfo"] = json!(format!("built from the source package {source}"));
        }
        if let Some(purl) = purl(p, m.os.as_ref()) {
            package["externalRefs"] =
                json!([{ "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": purl }]);
        }
        packages.push(package);
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_file.strip_suffix(".xz").unwrap_or(image_file),
        "documentNamespace": format!("urn:uuid:{}", revision_uuid(m, "spdx")),
        "creationInfo": {
            "created": m.provenance.built,
            "creators": [format!("Tool: {}", tool_version())],
        },
        "packages": packages,
        "relationships": relationships,
    });
    if !extracted.is_empty() {
        doc["hasExtractedLicensingInfos"] = extracted
            .iter()
            .map(|(id, name)| {
                json!({
                    "licenseId": id,
                    "name": name,
                    "extractedText": format!("The licence a package's Debian copyright file names `{name}`; SPDX has no identifier for it."),
                })
            })
            .collect();
    }
    doc
}

/// The CycloneDX 1.6 document (JSON).
pub fn cyclonedx(m: &Manifest, image_file: &str) -> Value {
    let components: Vec<Value> = m
        .packages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut c = json!({
                "type": "library",
                "bom-ref": format!("package-{}", i + 1),
                "name": p.name,
                "version": p.version,
            });
            if let Some(purl) = purl(p, m.os.as_ref()) {
                c["purl"] = json!(purl);
            }
            if !p.licenses.is_empty() {
                c["licenses"] = p
                    .licenses
                    .iter()
                    .map(|name| match spdx_id(name) {
                        Some(id) => json!({ "license": { "id": id } }),
                        None => json!({ "license": { "name": name } }),
                    })
                    .collect();
            }
            let mut properties = vec![json!({ "name": "virt-pipeline:package:arch", "value": p.arch })];
            if let Some(source) = &p.source {
                properties.push(json!({ "name": "virt-pipeline:package:source", "value": source }));
            }
            c["properties"] = json!(properties);
            c
        })
        .collect();
    let refs: Vec<Value> = components.iter().map(|c| c["bom-ref"].clone()).collect();
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": format!("urn:uuid:{}", revision_uuid(m, "cyclonedx")),
        "version": 1,
        "metadata": {
            "timestamp": m.provenance.built,
            "tools": { "components": [{ "type": "application", "name": "virt-pipeline", "version": env!("CARGO_PKG_VERSION") }] },
            "component": {
                "type": "operating-system",
                "bom-ref": "image",
                "name": m.entry,
                "description": describe_image(m),
                "hashes": [{ "alg": "SHA-512", "content": m.image_sha512 }],
                "properties": [{ "name": "virt-pipeline:image:file", "value": image_file }],
            },
        },
        "components": components,
        "dependencies": [{ "ref": "image", "dependsOn": refs }],
    })
}

fn describe_image(m: &Manifest) -> String {
    let os = m.os.as_ref().map(|os| format!("{} {} ({})", os.distro, os.version, os.arch)).unwrap_or("a disk".into());
    format!("{os}, published from pipeline {} (layer {})", m.provenance.pipeline, m.provenance.layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(distro: &str, version: &str, format: &str) -> OperatingSystem {
        OperatingSystem {
            distro: distro.into(),
            version: version.into(),
            arch: "x86_64".into(),
            package_format: format.into(),
            product_name: String::new(),
        }
    }

    fn package(name: &str, version: &str, arch: &str) -> Package {
        Package { name: name.into(), version: version.into(), arch: arch.into(), ..Default::default() }
    }

    /// purl-spec's deb type keeps the epoch in the version (a colon, not encoded); its rpm type
    /// has it as a qualifier; qualifiers are sorted.
    #[test]
    fn purls_follow_the_deb_and_rpm_types() {
        let debian = os("debian", "12", "deb");
        assert_eq!(
            purl(&package("libc6", "2.36-9+deb12u7", "amd64"), Some(&debian)).unwrap(),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u7?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            purl(&package("bash", "1:5.2-2", "amd64"), Some(&debian)).unwrap(),
            "pkg:deb/debian/bash@1:5.2-2?arch=amd64&distro=debian-12"
        );
        let rocky = os("rocky", "9.4", "rpm");
        assert_eq!(
            purl(&package("openssl", "1:3.0.7-27.el9", "x86_64"), Some(&rocky)).unwrap(),
            "pkg:rpm/rocky/openssl@3.0.7-27.el9?arch=x86_64&distro=rocky-9&epoch=1"
        );
        assert_eq!(purl(&package("x", "1", "noarch"), Some(&os("archlinux", "0", "pacman"))), None);
        assert_eq!(purl(&package("x", "1", "noarch"), None), None);
    }

    #[test]
    fn debian_licence_names_become_spdx_expressions() {
        assert_eq!(expression("GPL-2+").0, "GPL-2.0-or-later");
        assert_eq!(expression("expat").0, "MIT");
        // Names from an image are data: letters whose lower case is longer do not upset it.
        let (expr, refs) = expression("İİ or MIT");
        assert!(expr.starts_with("(LicenseRef-") && expr.ends_with(" OR MIT)") && refs[0].0.len() == 27, "{expr}");
        assert_eq!(expression("GPL-2+ or Artistic").0, "(GPL-2.0-or-later OR Artistic-1.0-Perl)");
        let (expr, refs) = expression("public-domain");
        assert_eq!(expr, "LicenseRef-public-domain");
        assert_eq!(refs, vec![("LicenseRef-public-domain".to_string(), "public-domain".to_string())]);
        // An exception SPDX cannot name from Debian's words: the whole name is one reference.
        assert_eq!(
            expression("GPL-2+ with OpenSSL exception or BSD-3-clause").0,
            "LicenseRef-GPL-2--with-OpenSSL-exception-or-BSD-3-clause"
        );
    }

    /// The documents are a function of the manifest: the same manifest gives the same bytes,
    /// another image another namespace.
    #[test]
    fn documents_are_a_function_of_the_manifest() {
        let mut m = Manifest {
            entry: "web".into(),
            revision: 3,
            image_sha512: "ab".repeat(64),
            size: 1,
            compressed_size: 1,
            provenance: crate::repo::manifest::Provenance {
                pipeline: "web".into(),
                layer: "k".into(),
                tool: "t".into(),
                built: "2026-12-08T00:00:00Z".into(),
            },
            packages: vec![package("bash", "5.2", "amd64")],
            packages_unreadable: None,
            os: Some(os("debian", "12", "deb")),
            documents: Default::default(),
        };
        let first = attach(&mut m, "web-r3.xz");
        assert_eq!(first, documents(&m, "web-r3.xz"), "the digests attached change nothing in the documents");
        assert_eq!(m.documents.keys().collect::<Vec<_>>(), ["web-r3.cdx.json", "web-r3.spdx.json"]);
        let namespace = spdx(&m, "web-r3.xz")["documentNamespace"].clone();
        m.image_sha512 = "cd".repeat(64);
        assert_ne!(spdx(&m, "web-r3.xz")["documentNamespace"], namespace);
    }
}
