//! One module per operation, each a record of name, default, description and function
//! (guestfs-tools' `sysprep/` layout). To add one: write the module and list it here.

mod abrt_data;
mod backup_files;
mod bash_history;
mod blkid_tab;
mod ca_certificates;
mod crash_data;
mod cron_spool;
mod customize;
mod dhcp_client_state;
mod dhcp_server_state;
mod dovecot_data;
mod firewall_rules;
mod flag_reconfiguration;
mod hostname;
mod ipa_client;
mod kerberos_data;
mod kerberos_hostkeytab;
mod logfiles;
mod lvm_system_devices;
mod lvm_uuids;
mod machine_id;
mod mail_spool;
mod net_hostname;
mod net_hwaddr;
mod net_nmconn;
mod pacct_log;
mod package_manager_cache;
mod pam_data;
mod passwd_backups;
mod puppet_data_log;
mod random_seed;
mod rh_subscription_manager;
mod rhn_systemid;
mod rpm_db;
mod samba_db_log;
mod script;
mod smolt_uuid;
mod ssh_hostkeys;
mod ssh_userdir;
mod sssd_db_log;
mod tmp_files;
mod udev_persistent_net;
mod utmp;
mod yum_uuid;
mod zsh_history;

use super::Operation;

/// Every operation, in the order they run.
pub const OPERATIONS: &[Operation] = &[
    abrt_data::OPERATION,
    backup_files::OPERATION,
    bash_history::OPERATION,
    blkid_tab::OPERATION,
    ca_certificates::OPERATION,
    crash_data::OPERATION,
    customize::OPERATION,
    cron_spool::OPERATION,
    dhcp_client_state::OPERATION,
    dhcp_server_state::OPERATION,
    dovecot_data::OPERATION,
    firewall_rules::OPERATION,
    flag_reconfiguration::OPERATION,
    hostname::OPERATION,
    ipa_client::OPERATION,
    kerberos_data::OPERATION,
    kerberos_hostkeytab::OPERATION,
    logfiles::OPERATION,
    lvm_system_devices::OPERATION,
    lvm_uuids::OPERATION,
    machine_id::OPERATION,
    mail_spool::OPERATION,
    net_hostname::OPERATION,
    net_hwaddr::OPERATION,
    net_nmconn::OPERATION,
    pacct_log::OPERATION,
    package_manager_cache::OPERATION,
    pam_data::OPERATION,
    passwd_backups::OPERATION,
    puppet_data_log::OPERATION,
    random_seed::OPERATION,
    rh_subscription_manager::OPERATION,
    rhn_systemid::OPERATION,
    rpm_db::OPERATION,
    samba_db_log::OPERATION,
    script::OPERATION,
    smolt_uuid::OPERATION,
    ssh_hostkeys::OPERATION,
    ssh_userdir::OPERATION,
    sssd_db_log::OPERATION,
    tmp_files::OPERATION,
    udev_persistent_net::OPERATION,
    utmp::OPERATION,
    yum_uuid::OPERATION,
    zsh_history::OPERATION,
];
