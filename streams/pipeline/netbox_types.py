"""The NetBox object types the diode plugin accepts, and the entity key of each.

The plugin reads a bulk entry's data under one key derived from the NetBox model's class name
(`netbox_diode_plugin/api/views.py::get_valid_entity_keys`): `IPAddress` gives `ip_address` or
`ipAddress`, `FHRPGroup` gives `fhrp_group` or `fhrpGroup`. The table below holds the
snake_case form for every object type the plugin knows (`plugin_utils.legal_object_types()`),
read off NetBox 4.7.3 with netboxlabs-diode-netbox-plugin 1.18.3 (the versions pinned in
`streams/dev/netbox-requirements.txt`); the lowerCamel form is derived, as the plugin does.

A type missing here can still be sent in the diode shape; only the flat shape needs the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

ENTITY_KEYS: Mapping[str, str] = MappingProxyType({
    # circuits
    "circuits.circuit": "circuit",
    "circuits.circuitgroup": "circuit_group",
    "circuits.circuitgroupassignment": "circuit_group_assignment",
    "circuits.circuittermination": "circuit_termination",
    "circuits.circuittype": "circuit_type",
    "circuits.provider": "provider",
    "circuits.provideraccount": "provider_account",
    "circuits.providernetwork": "provider_network",
    "circuits.virtualcircuit": "virtual_circuit",
    "circuits.virtualcircuittermination": "virtual_circuit_termination",
    "circuits.virtualcircuittype": "virtual_circuit_type",
    # core
    "core.managedfile": "managed_file",
    # dcim
    "dcim.cable": "cable",
    "dcim.cablebundle": "cable_bundle",
    "dcim.cablepath": "cable_path",
    "dcim.consoleport": "console_port",
    "dcim.consoleserverport": "console_server_port",
    "dcim.coolingfeed": "cooling_feed",
    "dcim.coolingintake": "cooling_intake",
    "dcim.coolingoutflow": "cooling_outflow",
    "dcim.coolingsource": "cooling_source",
    "dcim.device": "device",
    "dcim.devicebay": "device_bay",
    "dcim.devicerole": "device_role",
    "dcim.devicetype": "device_type",
    "dcim.frontport": "front_port",
    "dcim.interface": "interface",
    "dcim.inventoryitem": "inventory_item",
    "dcim.inventoryitemrole": "inventory_item_role",
    "dcim.location": "location",
    "dcim.macaddress": "mac_address",
    "dcim.manufacturer": "manufacturer",
    "dcim.module": "module",
    "dcim.modulebay": "module_bay",
    "dcim.modulebaytype": "module_bay_type",
    "dcim.moduletype": "module_type",
    "dcim.moduletypeprofile": "module_type_profile",
    "dcim.platform": "platform",
    "dcim.powerfeed": "power_feed",
    "dcim.poweroutlet": "power_outlet",
    "dcim.powerpanel": "power_panel",
    "dcim.powerport": "power_port",
    "dcim.rack": "rack",
    "dcim.rackgroup": "rack_group",
    "dcim.rackreservation": "rack_reservation",
    "dcim.rackrole": "rack_role",
    "dcim.racktype": "rack_type",
    "dcim.rearport": "rear_port",
    "dcim.region": "region",
    "dcim.site": "site",
    "dcim.sitegroup": "site_group",
    "dcim.virtualchassis": "virtual_chassis",
    "dcim.virtualdevicecontext": "virtual_device_context",
    # extras
    "extras.customfield": "custom_field",
    "extras.customfieldchoiceset": "custom_field_choice_set",
    "extras.customlink": "custom_link",
    "extras.journalentry": "journal_entry",
    "extras.tag": "tag",
    # ipam
    "ipam.aggregate": "aggregate",
    "ipam.asn": "asn",
    "ipam.asnrange": "asn_range",
    "ipam.fhrpgroup": "fhrp_group",
    "ipam.fhrpgroupassignment": "fhrp_group_assignment",
    "ipam.ipaddress": "ip_address",
    "ipam.iprange": "ip_range",
    "ipam.prefix": "prefix",
    "ipam.rir": "rir",
    "ipam.role": "role",
    "ipam.routetarget": "route_target",
    "ipam.service": "service",
    "ipam.vlan": "vlan",
    "ipam.vlangroup": "vlan_group",
    "ipam.vlantranslationpolicy": "vlan_translation_policy",
    "ipam.vlantranslationrule": "vlan_translation_rule",
    "ipam.vrf": "vrf",
    # tenancy
    "tenancy.contact": "contact",
    "tenancy.contactassignment": "contact_assignment",
    "tenancy.contactgroup": "contact_group",
    "tenancy.contactrole": "contact_role",
    "tenancy.tenant": "tenant",
    "tenancy.tenantgroup": "tenant_group",
    # users
    "users.owner": "owner",
    "users.ownergroup": "owner_group",
    "users.user": "user",
    # virtualization
    "virtualization.cluster": "cluster",
    "virtualization.clustergroup": "cluster_group",
    "virtualization.clustertype": "cluster_type",
    "virtualization.virtualdisk": "virtual_disk",
    "virtualization.virtualmachine": "virtual_machine",
    "virtualization.virtualmachinetype": "virtual_machine_type",
    "virtualization.vminterface": "vm_interface",
    # vpn
    "vpn.ikepolicy": "ike_policy",
    "vpn.ikeproposal": "ike_proposal",
    "vpn.ipsecpolicy": "ip_sec_policy",
    "vpn.ipsecprofile": "ip_sec_profile",
    "vpn.ipsecproposal": "ip_sec_proposal",
    "vpn.l2vpn": "l2vpn",
    "vpn.l2vpntermination": "l2vpn_termination",
    "vpn.tunnel": "tunnel",
    "vpn.tunnelgroup": "tunnel_group",
    "vpn.tunneltermination": "tunnel_termination",
    # wireless
    "wireless.wirelesslan": "wireless_lan",
    "wireless.wirelesslangroup": "wireless_lan_group",
    "wireless.wirelesslink": "wireless_link",
})


def lower_camel(snake: str) -> str:
    """`ip_address` -> `ipAddress`, the protoJSON spelling of a snake_case name."""
    first, *rest = snake.split("_")
    return first + "".join(part.capitalize() for part in rest)
