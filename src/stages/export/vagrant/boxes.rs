//! One box per provider: the disk converted for it (qcow2 for libvirt, a streamOptimized
//! VMDK for VirtualBox), the OVF, `metadata.json` and the `Vagrantfile`, packed by
//! [`super::pack`].

use super::pack::{write_box, Member};
use super::{Provider, VBOX_CPUS, VBOX_MEMORY_MB};
use crate::image::qemu_img;
use anyhow::Result;
use sha2::{Digest, Sha256};
use std::path::Path;

/// What every provider's box is made from.
pub(super) struct BoxPlan<'a> {
    pub(super) overlay: &'a Path,
    pub(super) scratch: &'a Path,
    pub(super) out: &'a Path,
    pub(super) virtual_size: u64,
    pub(super) info: Vec<u8>,
    /// UUIDs and the MAC address derive from it: the same box gets the same ones.
    pub(super) seed: &'a str,
    pub(super) os_type: (u32, &'static str),
    pub(super) vm_name: String,
    /// The Vagrantfile's /vagrant line when the guest has no VirtualBox guest additions.
    pub(super) synced_folder: Option<&'static str>,
    pub(super) mtime: u64,
}

pub(super) struct Packed {
    pub(super) file: String,
    pub(super) sha256: String,
    pub(super) size: u64,
}

impl BoxPlan<'_> {
    pub(super) fn build(
        &self,
        provider: Provider,
        file: &str,
        bar: &indicatif::ProgressBar,
        log: &crate::base::log::StageLog,
    ) -> Result<Packed> {
        let dir = self.scratch.join(provider.name());
        std::fs::create_dir_all(&dir)?;
        let (members, level) = match provider {
            Provider::Libvirt => {
                let img = dir.join("box.img");
                log.line(format!("# qemu-img convert -f qcow2 -O qcow2 {} {}", self.overlay.display(), img.display()));
                qemu_img::convert_from(self.overlay, "qcow2", &img, "qcow2")?;
                let gib = self.virtual_size.div_ceil(1 << 30);
                let metadata = serde_json::json!({ "provider": "libvirt", "format": "qcow2", "virtual_size": gib });
                let members = vec![
                    Member::Bytes("metadata.json", serde_json::to_vec_pretty(&metadata)?),
                    Member::Bytes("Vagrantfile", self.libvirt_vagrantfile().into_bytes()),
                    Member::Bytes("info.json", self.info.clone()),
                    Member::File("box.img", img),
                ];
                (members, flate2::Compression::default())
            }
            Provider::Virtualbox => {
                let vmdk = dir.join(VMDK);
                log.line(format!(
                    "# qemu-img convert -f qcow2 -O vmdk -o subformat=streamOptimized {} {}",
                    self.overlay.display(),
                    vmdk.display()
                ));
                qemu_img::convert_to_stream_vmdk(self.overlay, &vmdk)?;
                let mac = self.mac();
                let members = vec![
                    Member::Bytes(
                        "metadata.json",
                        serde_json::to_vec_pretty(&serde_json::json!({ "provider": "virtualbox" }))?,
                    ),
                    Member::Bytes("Vagrantfile", self.virtualbox_vagrantfile(&mac).into_bytes()),
                    Member::Bytes("info.json", self.info.clone()),
                    Member::Bytes("box.ovf", self.ovf(&mac).into_bytes()),
                    Member::File(VMDK, vmdk),
                ];
                // The VMDK is deflate-compressed already: gzip's fastest level loses nothing.
                (members, flate2::Compression::fast())
            }
        };
        let path = self.out.join(file);
        write_box(&path, &members, level, self.mtime, provider.name(), bar)?;
        let size = std::fs::metadata(&path)?.len();
        let sha256 = crate::base::digest::file_hex::<Sha256>(&path)?;
        Ok(Packed { file: file.to_string(), sha256, size })
    }

    fn libvirt_vagrantfile(&self) -> String {
        format!(
            "{}Vagrant.configure(\"2\") do |config|\n  config.vm.provider :libvirt do |libvirt|\n    libvirt.driver = \"kvm\"\n  end\nend\n",
            self.vagrantfile_header()
        )
    }

    fn virtualbox_vagrantfile(&self, mac: &str) -> String {
        let synced = match self.synced_folder {
            Some(line) => {
                format!("  # No VirtualBox guest additions in this box, so no vboxsf shared folder.\n  {line}\n")
            }
            None => String::new(),
        };
        format!(
            "{}Vagrant.configure(\"2\") do |config|\n  # The MAC address of box.ovf's NAT adapter.\n  config.vm.base_mac = \"{mac}\"\n{synced}end\n",
            self.vagrantfile_header()
        )
    }

    fn vagrantfile_header(&self) -> String {
        format!(
            "# The box's own Vagrantfile (virt-pipeline, {}); a project's Vagrantfile overrides it.\n",
            self.vm_name
        )
    }

    /// VirtualBox's own prefix 08:00:27, then three bytes of the seed's digest.
    fn mac(&self) -> String {
        let d = Sha256::digest(format!("{}\nmac", self.seed));
        format!("080027{:02X}{:02X}{:02X}", d[0], d[1], d[2])
    }

    fn uuid(&self, what: &str) -> String {
        let d = Sha256::digest(format!("{}\n{what}", self.seed));
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        // A version 4 (random) UUID in form: the digest stands in for the randomness.
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }

    /// An OVF 1.0 envelope as VirtualBox exports one, with its machine section.
    fn ovf(&self, mac: &str) -> String {
        let disk = self.uuid("disk");
        let machine = self.uuid("machine");
        let (os_id, os_type) = self.os_type;
        let name = &self.vm_name;
        let capacity = self.virtual_size;
        let (mem, cpus) = (VBOX_MEMORY_MB, VBOX_CPUS);
        format!(
            r#"<?xml version="1.0"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vbox="http://www.virtualbox.org/ovf/machine">
  <References>
    <File ovf:id="file1" ovf:href="{VMDK}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" vbox:uuid="{disk}"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="{os_id}">
      <Info>The kind of installed guest operating system</Info>
      <Description>{os_type}</Description>
      <vbox:OSType ovf:required="false">{os_type}</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>{cpus} virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>{mem} MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{mem} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{mem}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection>
        <rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.16-linux" uuid="{{{machine}}}" name="{name}" OSType="{os_type}" snapshotFolder="Snapshots">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="{cpus}">
          <PAE enabled="true"/>
          <LongMode enabled="true"/>
          <HardwareVirtExLargePages enabled="true"/>
        </CPU>
        <Memory RAMSize="{mem}"/>
        <Boot>
          <Order position="1" device="HardDisk"/>
          <Order position="2" device="None"/>
          <Order position="3" device="None"/>
          <Order position="4" device="None"/>
        </Boot>
        <BIOS>
          <IOAPIC enabled="true"/>
        </BIOS>
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="{mac}" type="82540EM">
            <NAT/>
          </Adapter>
        </Network>
      </Hardware>
      <StorageControllers>
        <StorageController name="SATA Controller" type="AHCI" PortCount="1" useHostIOCache="false" Bootable="true">
          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
            <Image uuid="{{{disk}}}"/>
          </AttachedDevice>
        </StorageController>
      </StorageControllers>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"#
        )
    }
}

/// The VMDK's name inside the virtualbox box (VirtualBox's own export names it so).
const VMDK: &str = "box-disk001.vmdk";

/// VirtualBox's guest OS type and the OVF (CIM) operating system id for it.
pub(super) fn vbox_os_type(distro: &str) -> (u32, &'static str) {
    match distro {
        "debian" => (96, "Debian_64"),
        "ubuntu" => (94, "Ubuntu_64"),
        "rhel" | "centos" | "rocky" | "almalinux" | "oraclelinux" | "scientificlinux" => (80, "RedHat_64"),
        "fedora" => (101, "Fedora_64"),
        "opensuse" | "sles" => (101, "OpenSUSE_64"),
        "archlinux" => (101, "ArchLinux_64"),
        _ => (101, "Linux26_64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: &str) -> BoxPlan<'static> {
        BoxPlan {
            overlay: Path::new("/nonexistent"),
            scratch: Path::new("/nonexistent"),
            out: Path::new("/nonexistent"),
            virtual_size: 4 << 30,
            info: Vec::new(),
            seed: Box::leak(seed.to_string().into_boxed_str()),
            os_type: vbox_os_type("debian"),
            vm_name: "debian-bookworm-1".into(),
            synced_folder: None,
            mtime: 0,
        }
    }

    #[test]
    fn the_ovf_names_one_disk_uuid_and_the_vagrantfile_its_mac() {
        let p = plan("debian-bookworm\nkey\n1");
        let mac = p.mac();
        assert!(mac.starts_with("080027") && mac.len() == 12, "{mac}");
        let ovf = p.ovf(&mac);
        let disk = p.uuid("disk");
        assert!(ovf.contains(&format!("vbox:uuid=\"{disk}\"")), "{ovf}");
        assert!(ovf.contains(&format!("<Image uuid=\"{{{disk}}}\"/>")), "{ovf}");
        assert!(ovf.contains(&format!("MACAddress=\"{mac}\"")));
        assert!(ovf.contains("ovf:capacity=\"4294967296\""));
        assert!(p.virtualbox_vagrantfile(&mac).contains(&format!("config.vm.base_mac = \"{mac}\"")));
        assert_ne!(p.uuid("disk"), p.uuid("machine"));
        assert_eq!(p.uuid("disk"), plan("debian-bookworm\nkey\n1").uuid("disk"), "the same box, the same UUIDs");
        assert_ne!(p.uuid("disk"), plan("debian-bookworm\nkey\n2").uuid("disk"));
        assert_eq!(&p.uuid("disk")[14..15], "4");
    }
}
