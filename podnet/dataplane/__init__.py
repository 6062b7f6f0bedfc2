"""Dataplane: the only layer that talks to the kernel (netlink, sysctls).

It turns the calc layer's value objects into kernel state and reads kernel
state back into the same value objects, so the agent can diff the two.
"""
