"""Wording of the out-of-template recall dialogues: fact families, statement and question frames, fillers.

Everything here was written for this evaluation and must share no phrasing with the δ-mem training
generators (``harness/training/synthetic.py``, ``self_replies.py``, the document layouts of ``sources.py``):
``tests/tasks/test_recall_oot.py`` checks that no 20-character stretch of any training literal occurs in these
tables or in generated dialogues, and that no value pool overlaps a training value pool. Filler text holds no
digits and no pool value, so the asked value is stated exactly once in a history.
"""
from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------------ value pools
# Given names and places chosen to be absent from the training pools (checked by the tests).
PERSONS = ("Thaddeus", "Marisol", "Ottoline", "Benedikt", "Saoirse", "Leopoldo", "Ingrid", "Cosmo", "Philippa",
           "Anselm", "Yolanda", "Rufus", "Gwendolyn", "Emeka", "Henrietta", "Lorcan", "Soledad", "Barnaby", "Ilse",
           "Desmond", "Xiomara", "Percival", "Agnieszka", "Tobiah", "Wilhelmina", "Caspian", "Ondine", "Fergus",
           "Beatrix", "Ignatius", "Marguerite", "Osvaldo", "Clementina", "Lysander", "Evangeline", "Horatio",
           "Solveig", "Montgomery", "Delphine", "Ezequiel")
PLACES = ("Trondheim", "Arequipa", "Plovdiv", "Timbuktu", "Inverness", "Salzburg", "Cartagena", "Tromso",
          "Mombasa", "Gdansk", "Antofagasta", "Hobart", "Lucerne", "Essaouira", "Kaunas", "Brno", "Galway",
          "Matera", "Ushuaia", "Bruges", "Tangier", "Visby", "Rotorua", "Kotor", "Sintra", "Oaxaca", "Aarhus",
          "Bayeux", "Whitby", "Cuenca", "Kazan", "Nafplio", "Dunedin", "Aswan", "Colmar", "Tartu")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
               "November", "December")
PHRASE_FIRST = ("crimson", "velvet", "hollow", "saffron", "drowsy", "frosted", "wandering", "silent", "gilded",
                "tangled", "lopsided", "brave", "dusty", "mellow", "nimble", "rusty", "sleepy", "wobbly")
PHRASE_SECOND = ("pelican", "lantern", "walrus", "teacup", "thistle", "accordion", "thimble", "glacier", "otter",
                 "kettle", "parsnip", "windmill", "badger", "umbrella", "cactus", "trumpet", "pebble", "quokka")
CODE_LETTERS = "ABCDEFGHJKMNPQRSTUVWXYZ"  # no I or O: they read as digits


# ------------------------------------------------------------------------------------------ fact families
@dataclass(frozen=True)
class Family:
    """A kind of fact: what it is called in generic frames, how its value is drawn, its own phrasings.

    ``noun`` fits "... <noun> is <value>" and "what was <noun>"; ``statements`` and ``questions`` are
    family-specific sentences (``{v}`` marks the value in statements; questions never hold it)."""

    key: str
    kind: str  # digits | code | person | place | date | phrase
    noun: str
    statements: tuple[str, ...]
    questions: tuple[str, ...]
    digits: tuple[int, int] = (3, 8)


FAMILIES: tuple[Family, ...] = (
    Family("storage_unit", "digits", "the number of my storage unit",
           ("The storage place out by the ring road gave me unit {v}, so that is where all the boxes went.",
            "All my winter things are now in storage, unit {v} at the far end of the corridor."),
           ("Which unit are my boxes kept in at the storage place?",
            "My stuff is in a storage unit, but which number?"), (3, 4)),
    Family("meter", "digits", "the electricity meter reading I took",
           ("The man from the power company wants the meter reading, and it says {v} today.",
            "I went down to the cellar with a torch and the electricity meter shows {v}."),
           ("The power company is asking again. What did the electricity meter say?",
            "Which figure did I read off the electricity meter?"), (5, 8)),
    Family("account", "digits", "my customer account number with the water company",
           ("The water company put my customer account number on the letter: {v}.",
            "If the water company ever calls, my account with them is number {v}."),
           ("The water company wants my account number on the phone. Which one was it?",
            "Can you find my customer account number with the water company?"), (6, 8)),
    Family("pin", "digits", "the entry code for the bike shed",
           ("The bike shed behind our building opens with {v} on the keypad now.",
            "They changed the keypad on the bike shed, and the new code is {v}."),
           ("I'm standing at the bike shed keypad. Which digits do I type?",
            "How do I get into the bike shed again?"), (4, 6)),
    Family("seat", "digits", "the seat number on my concert ticket",
           ("I finally got a ticket for the orchestra concert, seat {v} in the upper circle.",
            "My concert ticket came through and I'm sitting in seat {v}."),
           ("Where am I sitting at the orchestra concert?",
            "Which seat did I get at the concert?"), (3, 3)),
    Family("tracking", "code", "the tracking code of my parcel",
           ("The courier sent a message: my parcel can be followed with tracking code {v}.",
            "My parcel from the furniture shop has tracking code {v}, apparently."),
           ("The parcel still hasn't come. Which tracking code did the courier give me?",
            "Could you give me back the tracking code for that parcel?")),
    Family("booking", "code", "my booking reference for the ferry",
           ("I've booked the overnight ferry, and the booking reference is {v}.",
            "The ferry company emailed me a booking reference, {v}, for the crossing."),
           ("At the ferry check-in they want my reference. What is it?",
            "I need my ferry booking reference. Do you have it?")),
    Family("plate", "code", "the number plate of the van I hired",
           ("The hire van I picked up this morning has the number plate {v}.",
            "I'm driving a rented van this week, registration {v}, if anyone asks."),
           ("I've lost the van in the car park. What's its registration?",
            "Which number plate does the hired van have?")),
    Family("godson", "person", "the name of my godson",
           ("My godson {v} is turning seven soon and I have no idea what to get him.",
            "I've just become a godparent! The little one is named {v}."),
           ("Who is my godson again?", "I want to send my godson a card. What's his name?")),
    Family("vet", "person", "the name of the vet who treats my dog",
           ("Our new vet, {v}, was brilliant with the dog this afternoon.",
            "The vet who looks after my dog is {v}; she's very patient."),
           ("Who is the vet that looks after my dog?", "I need to ring the vet. Whom should I ask for?")),
    Family("instructor", "person", "the name of my driving instructor",
           ("My driving instructor is {v}, and he never raises his voice.",
            "Lessons start Monday with an instructor called {v}."),
           ("Who gives me my driving lessons?", "The person teaching me to drive, what's their name?")),
    Family("plumber", "person", "the name of the plumber who fixed the boiler",
           ("A plumber named {v} came round and got the boiler running again.",
            "{v} is the plumber who sorted out our boiler, and I'd like to hire him again."),
           ("Who was the plumber that repaired the boiler?", "The boiler is acting up. Which plumber came last time?")),
    Family("grandmother_town", "place", "the town where my grandmother grew up",
           ("My grandmother grew up in {v} and still talks about its harbour.",
            "Gran was born and raised in {v}, long before she moved here."),
           ("Where did my grandmother spend her childhood?", "In which town was Gran raised?")),
    Family("conference", "place", "the city hosting my work conference",
           ("My work is sending me to a conference in {v} next spring.",
            "The annual conference is being held in {v}, and I'm presenting there."),
           ("Where is the conference I'm presenting at?", "Which city is my work conference in?")),
    Family("honeymoon", "place", "where we went on our honeymoon",
           ("We spent our honeymoon in {v}, and we still have the photos on the fridge.",
            "For the honeymoon we picked {v}; it rained but we loved it."),
           ("Where did we go for our honeymoon?", "Which place did we choose for the honeymoon?")),
    Family("wedding", "date", "the date of my sister's wedding",
           ("My sister has set her wedding for {v}, so keep that day clear.",
            "Save the date: my sister gets married on {v}."),
           ("On which day is my sister getting married?", "When is my sister's wedding?")),
    Family("passport", "date", "the day my passport expires",
           ("I checked and my passport runs out on {v}.",
            "Annoyingly, my passport is only valid until {v}."),
           ("Until what date is my passport valid?", "When does my passport run out?")),
    Family("exam", "date", "the date of my final exam",
           ("My final exam has been scheduled for {v}, and I'm already nervous.",
            "They published the timetable: the final exam falls on {v}."),
           ("When do I sit my final exam?", "What day was my last exam on?")),
    Family("boat", "phrase", "the name painted on my uncle's boat",
           ("My uncle finally named his fishing boat, and the paint on the side says {v}.",
            "The little boat my uncle restored is called the {v}."),
           ("What did my uncle name his boat?", "What's painted on the side of my uncle's boat?")),
    Family("wifi", "phrase", "the password of the guest wifi",
           ("For visitors, the guest wifi password is {v}, all lowercase.",
            "I set the guest network password to {v} so my parents can remember it."),
           ("My friend wants to join the guest wifi. What's the password?",
            "Which password did I put on the guest network?")),
    Family("band", "phrase", "the name of my brother's band",
           ("My brother's band has a name at last: they call themselves {v}.",
            "My brother plays bass in a band called {v}."),
           ("What is my brother's band called?", "Which name did my brother's band pick?")),
)
FAMILY_BY_KEY = {f.key: f for f in FAMILIES}

# Generic frames, filled with a family's noun phrase. ``{Noun}`` is the phrase with a capital first letter.
STATEMENT_FRAMES = (
    "Quick one before it slips my mind: {noun} is {v}.",
    "Could you hang on to something for me? {Noun} is {v}.",
    "Jotting this here so it's somewhere safe. {Noun}: {v}.",
    "In case it comes up later, {noun} is {v}.",
    "So, small update from my side, {noun} turned out to be {v}.",
    "Keep this somewhere for me, please: {noun} is {v}.",
)
QUESTION_FRAMES = (
    "Remind me, what did I say {noun} was?",
    "I've blanked on {noun}. Can you tell me?",
    "Earlier I mentioned {noun}. What was it?",
    "Sorry to ask twice, but what's {noun}?",
    "Do you recall {noun} that I shared with you?",
    "Could you repeat {noun} for me?",
)
# Assistant turns after a fact. None repeats the value, so the history states it once.
FACT_REPLIES = (
    "Okay, I've got it.",
    "Sure, that's stored.",
    "Understood, ask me for it whenever you need it.",
    "No problem, it's safe with me.",
    "All right, I'll keep it in mind.",
    "Thanks, that's saved.",
    "Got that. Anything else?",
    "Sounds good, I'll hold on to it.",
)

# ------------------------------------------------------------------------------------------ small talk
# (user, assistant) exchanges with no digits, names or places from the pools.
SMALL_TALK = (
    ("I tried a new recipe for lentil soup tonight and it came out far too salty.",
     "That happens to everyone. A peeled potato simmered in the pot for a while soaks up some of the salt, "
     "and a squeeze of lemon can balance what is left."),
    ("My neighbour's cockerel starts crowing well before sunrise.",
     "That sounds exhausting. Foam earplugs or a fan for background noise might help you sleep through it, "
     "and a friendly word with the neighbour could be worth a try."),
    ("Do you think it's silly to start knitting at my age?",
     "Not at all. Knitting is relaxing at any age, and a simple scarf in a thick yarn is a forgiving first project."),
    ("The printer at the office jammed three times this morning.",
     "Printers seem to sense deadlines. Fanning the paper before loading it and checking for torn scraps inside "
     "often stops repeated jams."),
    ("I've been trying to get into running but my knees complain.",
     "Softer surfaces like grass or a track are kinder to knees, and building up distance slowly gives your "
     "joints time to adapt. Good shoes make a difference too."),
    ("What's a good way to remember people's faces at parties?",
     "Try to notice one distinctive feature and link it to something they said. Repeating their name back to "
     "them in the conversation also helps it stick."),
    ("My sourdough starter smells a bit like nail polish.",
     "That usually means it is hungry. Feed it more often for a few days and keep it somewhere slightly warmer, "
     "and the sharp smell should fade."),
    ("The kids want a treehouse this summer.",
     "What a fun project. Start with a sturdy, healthy tree, keep the platform low, and make the railings "
     "higher than you think you need."),
    ("I can never decide what to cook on weeknights.",
     "Planning three or four easy dinners on the weekend takes the pressure off. Sheet-pan meals and big pots "
     "of soup also give you leftovers for the next day."),
    ("Is it normal to feel tired after a long flight even if I slept?",
     "Yes, travel itself is draining: dry cabin air, little movement and a shifted body clock all add up. "
     "Water, daylight and a short walk usually help."),
    ("My houseplants are getting leggy and pale.",
     "That often means they want more light. Moving them closer to a bright window and turning the pots every "
     "week helps them grow evenly."),
    ("I keep buying books faster than I can read them.",
     "You are in good company. Some people keep a small shelf of next reads and only buy a new book when one "
     "from that shelf is finished."),
    ("Our team meeting ran over again today.",
     "Long meetings wear everyone down. A written agenda with a time for each item, and someone gently keeping "
     "watch on the clock, can rein them in."),
    ("I'm thinking about painting the hallway a darker colour.",
     "Darker colours can make a hallway feel cosy and elegant. Good lighting matters more then, so try a "
     "sample patch and look at it in the evening too."),
    ("What should I pack for a weekend of hiking?",
     "Layers, a waterproof jacket, comfortable broken-in boots, plenty of water, snacks, a map and a small "
     "first aid kit cover most situations."),
    ("My cat keeps knocking things off the shelf.",
     "Cats do that for attention and for fun. A few minutes of play with a feather toy before you sit down "
     "often calms their mischief down."),
    ("I want to learn some basic car maintenance.",
     "Checking the tyre pressure, oil level and washer fluid is a great start. The owner's manual explains "
     "where everything is, and it takes only minutes."),
    ("Tea or coffee in the afternoon, what do you think?",
     "Tea usually has less caffeine, so it is gentler on your sleep later. If you like coffee, a smaller cup "
     "early in the afternoon is a fair compromise."),
    ("I finished a jigsaw puzzle and now I miss having one.",
     "That is the jigsaw paradox. Swapping puzzles with friends or a local library is a cheap way to keep a "
     "fresh one on the table."),
    ("The wind last night blew our garden chairs over the fence.",
     "Hopefully nothing broke. Stacking the chairs against a wall or tying them down before a stormy night "
     "saves a trip into the neighbour's garden."),
    ("How do people stay tidy when they work from home?",
     "Many set a fixed spot that is only for work and tidy it at the end of each day. A short reset routine "
     "keeps the clutter from piling up."),
    ("My brother and I argued about the best way to load a dishwasher.",
     "A classic household debate. Plates facing the centre, glasses on top and nothing blocking the spray "
     "arms is what most manuals suggest."),
    ("I'd like to spend less time on my phone in bed.",
     "Charging the phone outside the bedroom works well for many people. A paper book or a short stretch "
     "routine can take its place at night."),
    ("We saw a fox in the park this evening.",
     "Foxes are lovely to spot. They are most active around dusk, so the evening is a good time to see them "
     "trotting along the paths."),
    ("My handwriting has become almost unreadable.",
     "Slowing down helps more than anything. Writing a few lines by hand every day, even a list, brings "
     "back control surprisingly quickly."),
    ("Should I repair my old boots or buy new ones?",
     "If the uppers are still sound, a cobbler can often replace the soles for much less than new boots, and "
     "they keep the shape your feet are used to."),
    ("It's been raining so much that the garden is a swamp.",
     "Waterlogged soil is hard on plants. Staying off the beds while they are soaked and adding compost later "
     "improves the drainage over time."),
    ("I'm hosting a dinner and one guest is vegan.",
     "A hearty main that everyone can eat, like a chickpea stew or a vegetable curry, keeps things simple and "
     "makes nobody feel like an afterthought."),
    ("Why do I always get sleepy after lunch?",
     "An afternoon dip is part of the natural daily rhythm, and a heavy meal adds to it. A lighter lunch and "
     "a short walk outside can keep you more alert."),
    ("My old laptop takes ages to start.",
     "Removing programs that launch at startup and freeing some disk space often helps a lot. An older machine "
     "can also feel new again with a solid state drive."),
    ("I want to write letters to friends instead of texting.",
     "That is a lovely habit. Letters feel personal, and keeping a small box of cards and stamps by the door "
     "makes it easy to send one."),
    ("The bakery down the road closed and I'm sad about it.",
     "Losing a favourite local shop is hard. Perhaps another baker nearby will pick up its regulars, and "
     "baking a loaf at home can be a comfort too."),
    ("I can't get the hang of chopsticks.",
     "Hold the lower stick still, resting against your ring finger, and move only the top one like a pencil. "
     "Practising with larger pieces of food helps."),
    ("We're thinking about getting a second-hand piano.",
     "Have a technician look at it before buying, since tuning and repairs can cost more than the piano. A "
     "steady room temperature keeps it in tune longer."),
    ("My shoulders are stiff from sitting at the desk.",
     "Rolling your shoulders back, stretching your chest in a doorway and getting up every hour all help. "
     "Raising the screen to eye level reduces the strain too."),
    ("Is it worth keeping a journal?",
     "Many people find it clears their head. It does not need to be long: a few lines about the day, or one "
     "thing you are grateful for, is plenty."),
    ("I've started feeding the birds on my balcony.",
     "The birds will appreciate it. Keeping the feeder clean and offering fresh water as well makes your "
     "balcony a favourite stop."),
    ("The heating in our flat makes the air so dry.",
     "A bowl of water near the radiator or a few houseplants add a little moisture. Airing the rooms briefly "
     "each day also helps more than you might expect."),
    ("I'm bad at saying no to extra work.",
     "It helps to have a phrase ready, like saying you will check your current load and get back to them. "
     "That pause makes a considered answer much easier."),
    ("We got lost on the way back from the lake today.",
     "An adventure, at least. Downloading offline maps before a trip and noting a landmark or two on the way "
     "out makes the return much easier."),
    ("My favourite mug just cracked.",
     "That is a small sadness. If the crack is only on the outside glaze it may still be fine for pens or a "
     "little plant, so it stays on your desk."),
    ("I'd like to get better at small talk.",
     "Curiosity goes a long way. Asking open questions about what someone enjoys and listening to the answer "
     "keeps a conversation going naturally."),
    ("Our street is having a clean-up day.",
     "That is a nice way to meet the neighbours. Gloves, sturdy bags and something warm to drink afterwards "
     "make the morning pleasant for everyone."),
    ("The cinema near me shows old films on quiet evenings.",
     "Seeing a classic on the big screen is special. Old comedies in particular are even funnier with a room "
     "full of people laughing."),
)
