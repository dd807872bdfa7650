//! `[network]`: interfaces with a static IPv4 address or DHCP, and name servers, written as
//! cloud-init's network config version 1 (NoCloud `network-config`) or OpenStack's
//! `network_data.json` (ConfigDrive), in the shapes Virtlet writes.

use super::yaml::Node;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// One entry per network interface of the guest.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// DNS servers (IPv4 addresses).
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// DNS search domains.
    #[serde(default)]
    pub search: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The interface's name in the guest (`eth0`, `ens3`); with `mac_address`, cloud-init
    /// gives the interface that has that address this name.
    pub name: String,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Ask DHCP for an IPv4 address.
    #[serde(default)]
    pub dhcp: bool,
    /// A static IPv4 address with its prefix length, `10.0.0.5/24`.
    #[serde(default)]
    pub address: Option<String>,
    /// The default gateway (static addresses only), inside the address's network.
    #[serde(default)]
    pub gateway: Option<String>,
}

/// A checked interface: what the writers need.
#[derive(Debug, Clone, PartialEq)]
struct Checked<'a> {
    iface: &'a Interface,
    mac: Option<String>,
    /// Address and netmask, or None for DHCP.
    address: Option<(Ipv4Addr, Ipv4Addr)>,
    gateway: Option<Ipv4Addr>,
}

impl NetworkConfig {
    /// Checks every entry; errors name the key below `network` (`interfaces[0].address: ...`).
    pub fn check(&self) -> Result<(), String> {
        self.checked().map(|_| ())
    }

    fn checked(&self) -> Result<Vec<Checked<'_>>, String> {
        if self.interfaces.is_empty() {
            return Err("interfaces: give at least one [[network.interfaces]] (or leave [network] out for cloud-init's default, DHCP on the first interface)".into());
        }
        let mut out = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let at = format!("interfaces[{i}]");
            let name_ok = !iface.name.is_empty()
                && iface.name.len() <= 15
                && iface.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !name_ok {
                return Err(format!(
                    "{at}.name: `{}` is not an interface name (up to 15 letters, digits, `-`, `_`, `.`)",
                    iface.name
                ));
            }
            if self.interfaces[..i].iter().any(|o| o.name == iface.name) {
                return Err(format!("{at}.name: `{}` is named twice", iface.name));
            }
            let mac = match &iface.mac_address {
                None => None,
                Some(m) => {
                    let parts: Vec<&str> = m.split(':').collect();
                    if parts.len() != 6 || !parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok()) {
                        return Err(format!("{at}.mac_address: `{m}` is not a MAC address such as 52:54:00:12:34:56"));
                    }
                    Some(m.to_ascii_lowercase())
                }
            };
            if iface.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
                return Err(format!("{at}.mtu: must be between 68 and 65535"));
            }
            let address = match (&iface.address, iface.dhcp) {
                (Some(_), true) => return Err(format!("{at}: give either dhcp = true or an address, not both")),
                (None, false) => {
                    return Err(format!("{at}: give dhcp = true or a static address such as address = \"10.0.0.5/24\""))
                }
                (None, true) => None,
                (Some(a), false) => Some(parse_cidr(a).map_err(|e| format!("{at}.address: {e}"))?),
            };
            let gateway = match (&iface.gateway, address) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(format!("{at}.gateway: DHCP supplies the gateway; set it only with a static address"))
                }
                (Some(g), Some((ip, mask))) => {
                    let gw: Ipv4Addr = g.parse().map_err(|_| format!("{at}.gateway: `{g}` is not an IPv4 address"))?;
                    let net = |a: Ipv4Addr| u32::from(a) & u32::from(mask);
                    if net(gw) != net(ip) {
                        return Err(format!(
                            "{at}.gateway: {gw} is outside the network of {}",
                            iface.address.as_deref().unwrap_or_default()
                        ));
                    }
                    Some(gw)
                }
            };
            out.push(Checked { iface, mac, address, gateway });
        }
        for (i, ns) in self.nameservers.iter().enumerate() {
            ns.parse::<Ipv4Addr>().map_err(|_| format!("nameservers[{i}]: `{ns}` is not an IPv4 address"))?;
        }
        for (i, domain) in self.search.iter().enumerate() {
            if domain.is_empty() || domain.contains(char::is_whitespace) {
                return Err(format!("search[{i}]: `{domain}` is not a domain name"));
            }
        }
        Ok(out)
    }

    /// NoCloud's `network-config`: version 1, a `physical` entry per interface and a
    /// `nameserver` entry, as Virtlet writes it (gateway as the subnet's `gateway`).
    pub fn to_v1(&self) -> Node {
        let mut config = Vec::new();
        for c in self.checked().unwrap_or_default() {
            let mut phys = Node::map();
            phys.insert(Node::str("type"), Node::str("physical"));
            phys.insert(Node::str("name"), Node::str(&c.iface.name));
            if let Some(mac) = &c.mac {
                phys.insert(Node::str("mac_address"), Node::str(mac));
            }
            if let Some(mtu) = c.iface.mtu {
                phys.insert(Node::str("mtu"), Node::Plain(mtu.to_string()));
            }
            let mut subnet = Node::map();
            match c.address {
                None => subnet.insert(Node::str("type"), Node::str("dhcp")),
                Some((ip, mask)) => {
                    subnet.insert(Node::str("type"), Node::str("static"));
                    subnet.insert(Node::str("address"), Node::str(ip.to_string()));
                    subnet.insert(Node::str("netmask"), Node::str(mask.to_string()));
                    if let Some(gw) = c.gateway {
                        subnet.insert(Node::str("gateway"), Node::str(gw.to_string()));
                    }
                }
            }
            phys.insert(Node::str("subnets"), Node::Seq(vec![subnet]));
            config.push(phys);
        }
        if !self.nameservers.is_empty() || !self.search.is_empty() {
            let mut dns = Node::map();
            dns.insert(Node::str("type"), Node::str("nameserver"));
            dns.insert(Node::str("address"), Node::Seq(self.nameservers.iter().map(Node::str).collect()));
            if !self.search.is_empty() {
                dns.insert(Node::str("search"), Node::Seq(self.search.iter().map(Node::str).collect()));
            }
            config.push(dns);
        }
        let mut doc = Node::map();
        doc.insert(Node::str("version"), Node::Plain("1".into()));
        doc.insert(Node::str("config"), Node::Seq(config));
        doc
    }

    /// ConfigDrive's `network_data.json`: `links`, `networks` and `services` as OpenStack
    /// and Virtlet write them. Each link also carries `name`, which cloud-init uses as the
    /// interface name; without it, cloud-init needs the MAC address to find the interface.
    pub fn to_network_data(&self) -> serde_json::Value {
        let mut links = Vec::new();
        let mut networks = Vec::new();
        for (i, c) in self.checked().unwrap_or_default().into_iter().enumerate() {
            let mut link = json!({ "id": c.iface.name, "name": c.iface.name, "type": "phy" });
            if let Some(mac) = &c.mac {
                link["ethernet_mac_address"] = json!(mac);
            }
            if let Some(mtu) = c.iface.mtu {
                link["mtu"] = json!(mtu);
            }
            links.push(link);
            let id = format!("net-{i}");
            let mut net = json!({ "id": id, "network_id": id, "link": c.iface.name });
            match c.address {
                None => net["type"] = json!("ipv4_dhcp"),
                Some((ip, mask)) => {
                    net["type"] = json!("ipv4");
                    net["ip_address"] = json!(ip.to_string());
                    net["netmask"] = json!(mask.to_string());
                    if let Some(gw) = c.gateway {
                        net["routes"] =
                            json!([{ "network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gw.to_string() }]);
                    }
                }
            }
            networks.push(net);
        }
        let mut data = json!({ "links": links, "networks": networks });
        if !self.nameservers.is_empty() || !self.search.is_empty() {
            let mut dns = json!({ "type": "nameserver", "address": self.nameservers });
            if !self.search.is_empty() {
                dns["search"] = json!(self.search);
            }
            data["services"] = json!([dns]);
        }
        data
    }
}

/// `10.0.0.5/24` → (10.0.0.5, 255.255.255.0).
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || format!("`{text}` is not an IPv4 address with a prefix length, such as 10.0.0.5/24");
    let (ip, len) = text.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&len) {
        return Err(bad());
    }
    let mask = Ipv4Addr::from(u32::MAX << (32 - len));
    Ok((ip, mask))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> NetworkConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn static_address_with_gateway_and_dns() {
        let n = config(
            "nameservers = [\"10.0.0.1\"]\nsearch = [\"example.net\"]\n[[interfaces]]\nname = \"eth0\"\nmac_address = \"52:54:00:AB:cd:01\"\nmtu = 1400\naddress = \"10.0.0.5/24\"\ngateway = \"10.0.0.1\"\n",
        );
        n.check().unwrap();
        let v1 = super::super::yaml::to_yaml(&n.to_v1());
        assert_eq!(
            v1,
            "version: 1\nconfig:\n- type: physical\n  name: eth0\n  mac_address: \"52:54:00:ab:cd:01\"\n  mtu: 1400\n  subnets:\n  - type: static\n    address: \"10.0.0.5\"\n    netmask: \"255.255.255.0\"\n    gateway: \"10.0.0.1\"\n- type: nameserver\n  address:\n  - \"10.0.0.1\"\n  search:\n  - example.net\n"
        );
        assert_eq!(
            n.to_network_data(),
            json!({
                "links": [{ "id": "eth0", "name": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:ab:cd:01", "mtu": 1400 }],
                "networks": [{ "id": "net-0", "network_id": "net-0", "link": "eth0", "type": "ipv4",
                               "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
                               "routes": [{ "network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1" }] }],
                "services": [{ "type": "nameserver", "address": ["10.0.0.1"], "search": ["example.net"] }],
            })
        );
    }

    #[test]
    fn dhcp() {
        let n = config("[[interfaces]]\nname = \"ens3\"\ndhcp = true\n");
        n.check().unwrap();
        let v1 = super::super::yaml::to_yaml(&n.to_v1());
        assert!(v1.ends_with("config:\n- type: physical\n  name: ens3\n  subnets:\n  - type: dhcp\n"), "{v1}");
        assert_eq!(n.to_network_data()["networks"][0]["type"], "ipv4_dhcp");
        assert!(n.to_network_data().get("services").is_none());
    }

    #[test]
    fn mistakes_name_the_key() {
        let cases = [
            ("[[interfaces]]\nname = \"eth0\"\n", "interfaces[0]: give dhcp = true"),
            ("[[interfaces]]\nname = \"eth0\"\ndhcp = true\naddress = \"10.0.0.5/24\"\n", "not both"),
            ("[[interfaces]]\nname = \"eth0\"\naddress = \"10.0.0.5\"\n", "interfaces[0].address"),
            (
                "[[interfaces]]\nname = \"eth0\"\naddress = \"10.0.0.5/24\"\ngateway = \"10.1.0.1\"\n",
                "outside the network",
            ),
            ("[[interfaces]]\nname = \"eth0\"\ndhcp = true\nmac_address = \"52:54:00\"\n", "interfaces[0].mac_address"),
            ("nameservers = [\"dns.example\"]\n[[interfaces]]\nname = \"eth0\"\ndhcp = true\n", "nameservers[0]"),
            ("", "at least one"),
        ];
        for (text, want) in cases {
            let e = config(text).check().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
