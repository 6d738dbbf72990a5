"""Word lists shipped with the package (written for this project; plain Python data, no files to find)."""

from __future__ import annotations

# Irregular English simple-past and past-participle forms. Forms identical to the present
# (put, set, cut, hit, let, read, cost, hurt, shut, quit, spread, beat, ...) are left out on
# purpose: without a POS tagger they cannot be told apart.
IRREGULAR_PAST = frozenset("""
was were had did done went gone came saw seen took taken made said got gotten knew known thought
told found gave given felt left kept began begun brought bought ran sat stood heard held lost met
paid sent spent built wrote written spoke spoken ate eaten drank drunk drove driven flew flown grew
grown threw thrown wore worn won woke woken chose chosen broke broken fell fallen forgot forgotten
hid hidden led lent meant rode ridden rose risen sang sung sank sunk slept stole stolen swam swum
taught tore torn understood became caught fought fed fled hung laid sold shot shook shone sought
swore sworn swept struck stuck sprang spun dealt dug dreamt froze frozen forgave forgiven bent bit
bitten blew blown bled bred bound clung crept drew drawn knelt leapt lit mistook overcame rang rung
slid sped spelt strove stung stank stunk strode swung wept withdrew withdrawn wound beheld forbade
forbidden foresaw undertook upheld withheld arose arisen awoke awoken bore borne
""".split())

# Words ending in -ed that are not past forms of a verb.
ED_EXCEPTIONS = frozenset("""
need seed feed speed weed deed heed indeed bleed breed exceed succeed proceed hundred sacred naked
wicked kindred shed sled bed red wed embed steed creed greed tweed reed ted ed fred jed ned med
bred led fled sped shred
""".split())

# Finite present-tense markers: forms of be/have/do, modals with present reference, and
# present forms (base and third person) of common verbs.
PRESENT_FINITE = frozenset("""
am is are isn't aren't i'm you're we're they're he's she's it's that's there's here's what's
who's let's do does don't doesn't has have hasn't haven't can can't cannot will won't shall may
must goes gets makes sees knows thinks wants loves likes needs feels says takes comes gives finds
tells seems looks enjoys recommends suggests visits becomes keeps hopes believes remembers tries
plays lives works uses means helps starts shows hears runs walks eats drinks reads writes stays
""".split())

# Base forms that are finite present when they follow a subject pronoun.
PRESENT_BASE = frozenset("""
go get make see know think want love like need feel say take come give find tell seem look enjoy
recommend suggest visit become keep hope believe remember try play live work use mean help start
show hear run walk eat drink read write stay prefer wish
""".split())

SUBJECT_PRONOUNS = frozenset("i you we they".split())

# Teen slang (2010s-2020s internet and spoken). Single tokens, lower case.
TEEN_SLANG = frozenset("""
lit fam bruh bro bestie lowkey highkey slay slayed slaying slays vibe vibes vibing vibey sus cap
nocap goat goated bussin fr frfr ngl tbh imo imho lol lmao lmfao rofl omg omfg idk idc ikr iykyk
smh tho yeet yeeted drip drippy salty savage stan stanning periodt period rizz rizzler mid based
cringe cringey deadass flex flexing ghosted ghosting glowup glow-up oof simp sheesh snatched squad
yolo gonna wanna gotta kinda sorta ya yall y'all hella dope af fomo bae thicc boujee bougie slaps
slap delulu npc skibidi gyat aura cooked ick rent-free ratio finna bet yass yas yasss periodt
legit totes obvi jk brb btw fyi gg ez noob sksksk vsco zaddy lewk tea spill spilled shook
unbothered extra dead ded wig bop banger bangers vibecheck mood istg wbu hbu ily ttyl w l
""".split()) - {"w", "l", "period", "spill", "spilled", "extra", "dead", "mood", "tea"}
